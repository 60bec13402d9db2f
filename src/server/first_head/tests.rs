use super::*;

fn refused(bytes: &[u8]) -> StatusCode {
    match inspect(bytes) {
        Verdict::Refuse(status, _) => status,
        other => panic!(
            "{:?} was not refused: {other:?}",
            String::from_utf8_lossy(bytes)
        ),
    }
}

#[test]
fn ordinary_heads_pass_with_or_without_their_body() {
    for head in [
        &b"GET /api/v1/models HTTP/1.1\r\nHost: p\r\n\r\n"[..],
        b"POST /api/v1/chat/completions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"GET / HTTP/1.0\n\n",
        b"OPTIONS * HTTP/1.1\r\nHost: p\r\n\r\n",
        b"GET /api/v1/models HTTP/1.1\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
    ] {
        assert_eq!(
            inspect(head),
            Verdict::Pass,
            "{:?}",
            String::from_utf8_lossy(head)
        );
    }
}

#[test]
fn a_partial_head_waits_for_more_and_the_http2_preface_passes() {
    assert_eq!(
        inspect(b"GET /api/v1/models HTTP/1.1\r\nHost:"),
        Verdict::Incomplete
    );
    assert_eq!(inspect(b"PRI * HTTP/2"), Verdict::Incomplete);
    assert_eq!(inspect(HTTP2_PREFACE), Verdict::Pass);
}

#[test]
fn unparseable_heads_are_refused_as_bad_requests() {
    for head in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /api/v1/models\r\n\r\n",
        b"GET /x HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET /x HTTP/1.1\r\nX: a\x01b\r\n\r\n",
        b"GET /x HTTP/2.0\r\n\r\n",
        b"GET http://[::1 HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(
            refused(head),
            StatusCode::BAD_REQUEST,
            "{:?}",
            String::from_utf8_lossy(head)
        );
    }
}

#[test]
fn oversized_heads_are_refused_as_too_large() {
    let many = format!("GET /x HTTP/1.1\r\n{}\r\n", "X: v\r\n".repeat(101));
    assert_eq!(
        refused(many.as_bytes()),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let long = format!("GET /x HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
    assert_eq!(
        refused(long.as_bytes()),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}

#[test]
fn ambiguous_body_framing_is_refused() {
    for head in [
        "POST /x HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n",
        "POST /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n",
        "POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "POST /x HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n",
        "POST /x HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n",
        "POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST /x HTTP/1.1\r\nTransfer-Encoding: \u{e9},chunked\r\n\r\n",
        "POST /x HTTP/1.1\r\nContent-Length: 18446744073709551614\r\n\r\n",
        "POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: zz\r\n\r\n",
    ] {
        assert_eq!(
            refused(head.as_bytes()),
            StatusCode::BAD_REQUEST,
            "{head:?}"
        );
    }
    let same_twice = "POST /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}";
    assert_eq!(inspect(same_twice.as_bytes()), Verdict::Pass);
}

#[test]
fn the_end_of_a_head_is_found_with_either_line_ending() {
    assert!(ends_head(b"Host: p\r\n\r\n"));
    assert!(ends_head(b"Host: p\n\n"));
    assert!(!ends_head(b"Host: p\r\nX: y\r\n"));
}
