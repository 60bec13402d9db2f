//! Redis key names. Everything lives under `REDIS_PREFIX`; one account's data is
//! one hash (so one hash slot: `{…}` hash tags), one key's another. Keys are named
//! by the same SHA-256 prefix as in the state file, never by their value.

use crate::keys::KeyPool;

pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Self {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    /// Account `index` of `pool`: by its configured name, else by the OpenRouter user its
    /// answers named (so keys grouped by what OpenRouter said share one hash on every
    /// replica, whichever key each replica saw first), else by its first key.
    pub fn account(&self, pool: &KeyPool, index: usize) -> String {
        let prefix = &self.prefix;
        let account = &pool.accounts()[index];
        if let Some(name) = &account.name {
            return format!("{prefix}{{a:n:{name}}}");
        }
        if let Some(user) = account.user_id.get() {
            return format!("{prefix}{{a:u:{user}}}");
        }
        let first = pool.keys().iter().find(|k| k.account() == index);
        let fingerprint = first.map_or("", |k| k.fingerprint.as_str());
        format!("{prefix}{{a:k:{fingerprint}}}")
    }

    /// The key with `fingerprint`.
    pub fn key(&self, fingerprint: &str) -> String {
        format!("{}{{k:{fingerprint}}}", self.prefix)
    }

    /// Who probes the key with `fingerprint` this interval.
    pub fn probe_lease(&self, fingerprint: &str) -> String {
        format!("{}{{k:{fingerprint}}}:probe", self.prefix)
    }

    /// The client named `name` (names are `[A-Za-z0-9_.-]`).
    pub fn client(&self, name: &str) -> String {
        format!("{}{{c:{name}}}", self.prefix)
    }

    /// The fleet's heartbeats.
    pub fn replicas(&self) -> String {
        format!("{}replicas", self.prefix)
    }
}
