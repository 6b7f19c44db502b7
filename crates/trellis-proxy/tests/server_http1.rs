//! The proxy's HTTP/1.1 server side as a client sees it on the wire: pipelined requests,
//! request and response bodies of every framing, `Expect: 100-continue`, HEAD, and HTTP/1.0.
//! A real proxy process (explicit mode, loopback) in front of the testkit's HTTP backend,
//! spoken to over raw sockets so that every byte is checked.
mod support;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use support::{TestProxy, free_port};
use trellis_testkit::backend::spawn_backend;

/// Upper bound on any single wait on the socket, so a hanging proxy fails the test.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

fn proxy() -> (TestProxy, SocketAddr, impl Drop) {
    let (guard, backend) = spawn_backend(&["http", "--name", "a"]);
    let port = free_port();
    let proxy = TestProxy::start(&format!(
        "kind: Proxy\nadmin: '{{admin}}'\nexplicit: [{{listen: '127.0.0.1:{port}', service: api}}]\n---\nkind: Endpoints\nservice: api\nendpoints: [{{address: '{backend}'}}]\n"
    ));
    (proxy, format!("127.0.0.1:{port}").parse().unwrap(), guard)
}

struct Client {
    reader: BufReader<TcpStream>,
}

/// One response as read off the connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, READ_TIMEOUT).unwrap();
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client { reader: BufReader::new(stream) }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("reading a line from the proxy");
        assert!(line.ends_with("\r\n"), "an unterminated line (connection closed?): {line:?}");
        line.truncate(line.len() - 2);
        line
    }

    /// Reads one response; `head` says it answers a HEAD request (no body whatever the
    /// headers say).
    fn answer(&mut self, head: bool) -> Answer {
        let status_line = self.line();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("not a header: {line:?}"));
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let mut answer = Answer { status, headers, body: Vec::new() };
        if head || status == 100 || status == 204 || status == 304 {
            return answer;
        }
        if answer.header("transfer-encoding") == Some("chunked") {
            loop {
                let size = usize::from_str_radix(&self.line(), 16).expect("a chunk size");
                if size == 0 {
                    while !self.line().is_empty() {} // trailers
                    break;
                }
                let mut chunk = vec![0; size];
                self.reader.read_exact(&mut chunk).unwrap();
                answer.body.extend_from_slice(&chunk);
                assert_eq!(self.line(), "", "a chunk is followed by a line end");
            }
        } else if let Some(length) = answer.header("content-length") {
            answer.body = vec![0; length.parse().unwrap()];
            self.reader.read_exact(&mut answer.body).unwrap();
        } else {
            self.reader.read_to_end(&mut answer.body).unwrap();
        }
        answer
    }

    /// The proxy closed the connection (after everything it had to say).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(self.reader.read_to_end(&mut rest), Ok(0))
    }
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (_proxy, addr, _backend) = proxy();
    let mut client = Client::connect(addr);
    // Three requests in one write, one of them with a body.
    client.send(
        b"GET /first HTTP/1.1\r\nhost: api\r\n\r\nPOST /echo HTTP/1.1\r\nhost: api\r\ncontent-length: 5\r\n\r\nhelloGET /third?x=1 HTTP/1.1\r\nhost: api\r\n\r\n",
    );
    let first = client.answer(false);
    assert_eq!((first.status, first.json()["path"].as_str()), (200, Some("/first")));
    let echo = client.answer(false);
    assert_eq!((echo.status, echo.body.as_slice()), (200, &b"hello"[..]));
    let third = client.answer(false);
    assert_eq!((third.status, third.json()["path"].as_str()), (200, Some("/third?x=1")));
    // A HEAD answer has the headers a GET would get and no body; the connection carries on.
    client.send(b"HEAD /first HTTP/1.1\r\nhost: api\r\n\r\n");
    let head = client.answer(true);
    assert_eq!((head.status, head.header("content-type")), (200, Some("application/json")));
    client.send(b"GET /bytes/3 HTTP/1.1\r\nhost: api\r\n\r\n");
    let after = client.answer(false);
    assert_eq!((after.status, after.body.len()), (200, 3));
    assert!(after.header("date").is_some(), "{after:?}");
}

#[test]
fn a_chunked_upload_comes_back_chunked_and_whole() {
    let (_proxy, addr, _backend) = proxy();
    let mut client = Client::connect(addr);
    client.send(b"POST /echo HTTP/1.1\r\nhost: api\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n");
    std::thread::sleep(Duration::from_millis(100)); // the rest in a later read
    client.send(b"1\r\n \r\n5\r\nworld\r\n0\r\nx-trailer: t\r\n\r\n");
    let echo = client.answer(false);
    assert_eq!(echo.status, 200);
    assert_eq!(String::from_utf8_lossy(&echo.body), "hello world");
    // Its length was not known in advance, so the answer is chunked; the connection stays.
    assert_eq!(echo.header("transfer-encoding"), Some("chunked"), "{echo:?}");
    client.send(b"GET /again HTTP/1.1\r\nhost: api\r\n\r\n");
    assert_eq!(client.answer(false).json()["path"], "/again");
}

#[test]
fn a_client_expecting_100_continue_gets_it_before_it_sends_the_body() {
    let (_proxy, addr, _backend) = proxy();
    let mut client = Client::connect(addr);
    client.send(b"POST /echo HTTP/1.1\r\nhost: api\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n");
    let interim = client.answer(false);
    assert_eq!(interim.status, 100, "{interim:?}");
    client.send(b"body");
    let echo = client.answer(false);
    assert_eq!((echo.status, echo.body.as_slice()), (200, &b"body"[..]));
}

#[test]
fn an_http10_client_is_answered_and_closed_unless_it_asks_for_keep_alive() {
    let (_proxy, addr, _backend) = proxy();
    let mut client = Client::connect(addr);
    client.send(b"GET /old HTTP/1.0\r\nhost: api\r\n\r\n");
    let answer = client.answer(false);
    assert_eq!((answer.status, answer.json()["path"].as_str()), (200, Some("/old")));
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(client.closed(), "the connection ends after an HTTP/1.0 answer");

    let mut client = Client::connect(addr);
    for path in ["/kept", "/kept-again"] {
        client.send(format!("GET {path} HTTP/1.0\r\nhost: api\r\nconnection: keep-alive\r\n\r\n").as_bytes());
        let answer = client.answer(false);
        assert_eq!(answer.json()["path"], path);
        assert_eq!(answer.header("connection"), Some("keep-alive"));
    }
    // An upload answered with a body of unknown length: an HTTP/1.0 client cannot read
    // chunks, so the body runs to the close.
    client.send(b"POST /echo HTTP/1.0\r\nhost: api\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nhi");
    let echo = client.answer(false);
    assert_eq!(echo.body, b"hi");
    assert_eq!(echo.header("transfer-encoding"), None);
}

#[test]
fn a_client_that_asks_to_close_is_answered_then_closed() {
    let (_proxy, addr, _backend) = proxy();
    let mut client = Client::connect(addr);
    client.send(b"GET /bye HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n");
    let answer = client.answer(false);
    assert_eq!(answer.json()["path"], "/bye");
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(client.closed());
}
