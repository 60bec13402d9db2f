"""A small mock OpenRouter for the process-level tests (empty-root binary, Python SDK).

Serves on 127.0.0.1 at the port given as the first argument (0 = any; the
chosen port is printed as "ready <port>"). Answers chat completions as JSON,
or as an SSE stream when the body asks for "stream": true, and records the
Authorization header of every request so tests can check which key was used.
A key containing "permin" or "perday" is refused with OpenRouter's per-minute or
daily free-model 429, so tests can put keys into those states.
"""
import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEEN_KEYS = []


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.endswith("/seen_keys"):
            self.reply_json(200, {"keys": SEEN_KEYS})
        else:
            SEEN_KEYS.append(self.headers.get("Authorization", ""))
            self.reply_json(200, {"data": [{"id": "qwen/qwen3-coder:free"}]})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        key = self.headers.get("Authorization", "")
        SEEN_KEYS.append(key)
        # Keys named for a refusal get it, so tests can put keys into every state.
        reset = str(int(time.time() * 1000) + 10 * 60 * 1000)
        if "permin" in key:
            return self.reply_json(429, {"error": {"code": 429, "message": "Rate limit exceeded: free-models-per-min. ",
                                                   "metadata": {"headers": {"X-RateLimit-Reset": reset}}}})
        if "perday" in key:
            return self.reply_json(429, {"error": {"code": 429, "message": "Rate limit exceeded: free-models-per-day. ",
                                                   "metadata": {"headers": {"X-RateLimit-Limit": "50"}}}})
        if body.get("stream"):
            self.stream(body.get("model", "mock/model"))
        else:
            self.reply_json(200, {
                "id": "gen-mock-1", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "mock/model"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "Hello from the mock."}}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "cost": 0.00021},
            })

    def reply_json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def stream(self, model):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = [": OPENROUTER PROCESSING"]
        for word in ["Hello", " from", " the", " mock."]:
            events.append("data: " + json.dumps({
                "id": "gen-mock-2", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}))
        events.append("data: " + json.dumps({
            "id": "gen-mock-2", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9, "cost": 0.00003}}))
        events.append("data: [DONE]")
        for event in events:
            chunk = (event + "\n\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
            time.sleep(0.02)
        self.wfile.write(b"0\r\n\r\n")


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 0), Handler)
    print(f"ready {server.server_address[1]}", flush=True)
    server.serve_forever()
