//! Tests of the relay's head parsing, framing and chunked decoding.

use super::*;

fn plan(text: &str) -> Option<Plan> {
    match parse_request(text.as_bytes()) {
        Parsed::Relay(p) => Some(p),
        _ => None,
    }
}

#[test]
fn plain_gets_and_heads_are_relayed_with_their_forwardable_headers() {
    let text = "GET /s/Patient/1?x=1 HTTP/1.1\r\nHost: 127.0.0.1:80\r\nAccept: a/b\r\n\
                Authorization: Bearer t\r\nCookie: c=1\r\nX-Request-Id: r1\r\n\
                Connection: keep-alive\r\n\r\nGET /next";
    let p = plan(text).expect("relayed");
    let b = text.as_bytes();
    assert_eq!(&b[p.target.clone()], b"/s/Patient/1?x=1");
    assert_eq!(&b[p.host.clone()], b"127.0.0.1:80");
    assert_eq!(&b[p.authorization.clone().unwrap()], b"Bearer t");
    assert_eq!(&b[p.request_id.clone().unwrap()], b"r1");
    let names: Vec<&[u8]> = p.forward.iter().map(|(n, _)| &b[n.clone()]).collect();
    assert_eq!(names, vec![&b"Accept"[..]]);
    assert_eq!(&text[p.len..], "GET /next");
    assert!(!p.head && !p.close);
    let p = plan("HEAD / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n").unwrap();
    assert!(p.head && p.close);
}

#[test]
fn everything_else_goes_to_hyper() {
    for text in [
        "POST /s/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        "GET /s/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        "GET /s/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET /s/x HTTP/1.0\r\nHost: h\r\n\r\n",
        "GET http://h/s/x HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /s/x HTTP/1.1\r\n\r\n",
        "GET /s/x HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
        "GET /s/x HTTP/1.1\r\nHost: h\r\nOrigin: http://h\r\n\r\n",
        "GET /s/x HTTP/1.1\r\nHost: h\r\nReferer: http://h/\r\n\r\n",
        "GET /s/x HTTP/1.1\r\nHost: h\r\nSec-Fetch-Site: cross-site\r\n\r\n",
        "GET /s/x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
        "GET /s/x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n",
        "GET /s/x HTTP/1.1\r\nHost: h\r\nConnection: x-secret\r\nX-Secret: 1\r\n\r\n",
        "CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n",
        "TRACE /s/x HTTP/1.1\r\nHost: h\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        "GET /s/x HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n",
    ] {
        assert!(
            matches!(parse_request(text.as_bytes()), Parsed::Elsewhere),
            "{text:?}"
        );
    }
    let many = format!(
        "GET / HTTP/1.1\r\nHost: h\r\n{}\r\n",
        "A: b\r\n".repeat(101)
    );
    assert!(matches!(parse_request(many.as_bytes()), Parsed::Elsewhere));
    assert!(matches!(
        parse_request(b"GET /s/x HTTP/1.1\r\nHost: h\r\n"),
        Parsed::Partial
    ));
}

fn answer(text: &str, to_head: bool) -> Answer {
    match parse_answer(text.as_bytes(), to_head).unwrap() {
        AnswerHead::Final(a) => a,
        other => panic!("{other:?}"),
    }
}

#[test]
fn answers_are_framed_as_rfc_9112_says() {
    let a = answer("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false);
    assert_eq!((a.framing, a.reusable), (Framing::Length(5), true));
    let a = answer("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
    assert_eq!((a.framing, a.declared_length), (Framing::Empty, Some(5)));
    let a = answer(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
    );
    assert_eq!((a.framing, a.reusable), (Framing::Chunked, true));
    let a = answer(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        false,
    );
    assert_eq!((a.framing, a.reusable), (Framing::Chunked, false));
    let a = answer("HTTP/1.1 200 OK\r\n\r\n", false);
    assert_eq!((a.framing, a.reusable), (Framing::Close, false));
    let a = answer(
        "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n\r\n",
        false,
    );
    assert_eq!(
        (a.framing, a.reusable, a.declared_length),
        (Framing::Empty, true, None)
    );
    let a = answer("HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", false);
    assert_eq!(a.framing, Framing::Length(5));
    let a = answer(
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        false,
    );
    assert_eq!((a.framing, a.declared_length), (Framing::Empty, Some(9)));
    let a = answer(
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\n",
        false,
    );
    assert!(!a.reusable);
    let a = answer("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
    assert!(!a.reusable);
    assert!(matches!(
        parse_answer(b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\n", false),
        Ok(AnswerHead::Interim(37))
    ));
    assert!(matches!(
        parse_answer(b"HTTP/1.1 200 OK\r\n", false),
        Ok(AnswerHead::Partial)
    ));
}

#[test]
fn ambiguous_or_broken_answers_are_refused() {
    for text in [
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "HTTP/1.1 099 Low\r\nContent-Length: 0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        "HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
        "SSH-2.0-OpenSSH\r\n\r\n",
    ] {
        assert!(parse_answer(text.as_bytes(), false).is_err(), "{text:?}");
    }
    let big = format!("HTTP/1.1 200 OK\r\nA: {}", "b".repeat(MAX_ANSWER_HEAD + 1));
    assert!(parse_answer(big.as_bytes(), false).is_err());
}

#[test]
fn the_caller_gets_no_hop_by_hop_browser_acting_or_own_headers() {
    let text =
        "HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nDate: d\r\nSet-Cookie: s=1\r\nAlt-Svc: h3\r\n\
                Access-Control-Allow-Origin: *\r\nConnection: x-hop\r\nX-Hop: 1\r\n\
                Keep-Alive: timeout=5\r\nX-Request-Id: theirs\r\n\
                X-Content-Type-Options: x\r\nContent-Security-Policy: default-src 'self'\r\n\
                Content-Length: 2\r\n\r\n";
    let a = answer(text, false);
    let mut out = Vec::new();
    answer_head(&mut out, &a, text.as_bytes(), b"ours", false);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: a/b\r\ndate: d\r\n\
         content-security-policy: default-src 'self'\r\ncontent-length: 2\r\n\
         x-content-type-options: nosniff\r\n\
         content-security-policy: sandbox; frame-ancestors 'none'\r\nx-request-id: ours\r\n\r\n"
    );
}

/// Decodes `body` fed in pieces of `step` bytes.
fn decode(body: &[u8], step: usize) -> Result<Vec<u8>, String> {
    let mut chunks = Chunks::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut fed = 0;
    loop {
        let (used, found) = chunks.next(&buf)?;
        if let Chunk::Data(r) = &found {
            out.extend_from_slice(&buf[r.clone()]);
        }
        buf.drain(..used);
        match found {
            Chunk::Done => {
                assert!(chunks.is_done());
                return Ok(out);
            }
            Chunk::Data(_) => {}
            Chunk::More if fed >= body.len() => return Err("truncated".into()),
            Chunk::More => {
                let end = (fed + step).min(body.len());
                buf.extend_from_slice(&body[fed..end]);
                fed = end;
            }
        }
    }
}

#[test]
fn chunked_bodies_decode_whatever_the_pieces() {
    let body = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n";
    for step in 1..body.len() {
        assert_eq!(
            decode(body, step).unwrap(),
            b"helloabcdefghijklmnopqrstuvwxyz"
        );
    }
    assert_eq!(decode(b"0\r\n\r\n", 64).unwrap(), b"");
}

#[test]
fn broken_chunked_bodies_are_errors() {
    for body in [
        &b"5\r\nhelloXX0\r\n\r\n"[..],
        b"5\nhello\r\n0\r\n\r\n",
        b"g\r\nx\r\n0\r\n\r\n",
        b"\r\n",
        b"fffffffffffffffff\r\n",
        b"5\r\nhel",
    ] {
        assert!(
            decode(body, 3).is_err(),
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
    let long = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_CHUNK_LINE));
    assert!(decode(long.as_bytes(), 64).is_err());
    // Trailers just over their limit are an error, whatever the pieces (never a panic or a
    // limit that wraps around).
    for filler in [MAX_TRAILERS - 4, MAX_TRAILERS - 3, MAX_TRAILERS] {
        let body = format!("0\r\na:{}\r\nb: c\r\n\r\n", "b".repeat(filler));
        for step in [1, 7, 4096, body.len()] {
            assert!(decode(body.as_bytes(), step).is_err(), "{filler} by {step}");
        }
    }
}

#[test]
fn lines_of_just_the_limit_decode_even_when_split_between_cr_and_lf() {
    // A chunk-size line of MAX_CHUNK_LINE bytes, its CR the last byte of a piece.
    let line = format!("1;{}", "e".repeat(MAX_CHUNK_LINE - 2));
    let body = format!("{line}\r\nx\r\n0\r\n\r\n");
    let mut chunks = Chunks::default();
    let first = &body.as_bytes()[..MAX_CHUNK_LINE + 1];
    assert_eq!(chunks.next(first).unwrap(), (0, Chunk::More));
    assert_eq!(decode(body.as_bytes(), MAX_CHUNK_LINE + 1).unwrap(), b"x");
}
