//! A URL this client fetches, taken apart: `http[s]://host[:port][/path][?query]`, and why
//! a text is not one ([`UrlError`]). Nothing in a URL can add a line to the request.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// An `http://` or `https://` URL, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// A host name, or an IP address (an IPv6 one without its brackets).
    pub host: String,
    pub port: u16,
    /// The path and query, as sent in the request line: `/` at least, the fragment left
    /// out, and every byte that is not visible ASCII (a space, a control character, UTF-8)
    /// percent-encoded, so that nothing in a URL can add a line to the request.
    pub target: String,
}

/// Why a text is not a URL this client fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlError {
    /// Not `http://` or `https://` (the scheme given, or the start of the text).
    Scheme(String),
    /// Nothing between `//` and the path.
    NoHost,
    /// `user:password@host`: credentials do not belong in a message that is logged and
    /// journaled on two nodes.
    Credentials,
    /// A host that is neither a plain ASCII name nor an IP address.
    Host(String),
    /// A port that is not a number from 1 to 65535.
    Port(String),
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UrlError::Scheme(s) => write!(
                f,
                "not an http:// or https:// URL (scheme {s:?}); only those are fetched"
            ),
            UrlError::NoHost => f.write_str("no host in the URL"),
            UrlError::Credentials => {
                f.write_str("credentials in the URL (user@host) are not supported")
            }
            UrlError::Host(h) => write!(
                f,
                "bad host {h:?}: a name of letters, digits, '-', '_' and '.' (an internationalized name in its xn-- form), or an IP address ([::1] for IPv6)"
            ),
            UrlError::Port(p) => write!(f, "bad port {p:?}: a number from 1 to 65535"),
        }
    }
}

impl std::error::Error for UrlError {}

impl Url {
    /// Takes `text` apart: `http[s]://host[:port][/path][?query][#fragment]`. The scheme is
    /// case-insensitive; the fragment is not sent.
    pub fn parse(text: &str) -> Result<Url, UrlError> {
        let text = text.trim();
        let (scheme, rest) = match text.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("http") => (Scheme::Http, rest),
            Some((s, rest)) if s.eq_ignore_ascii_case("https") => (Scheme::Https, rest),
            Some((s, _)) => return Err(UrlError::Scheme(s.chars().take(32).collect())),
            None => return Err(UrlError::Scheme(text.chars().take(32).collect())),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, rest) = rest.split_at(end);
        if authority.contains('@') {
            return Err(UrlError::Credentials);
        }
        let (host, port) = split_host_port(authority)?;
        let port = match port {
            None | Some("") => scheme.default_port(),
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(UrlError::Port(p.chars().take(32).collect())),
            },
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let mut target = String::with_capacity(rest.len() + 1);
        if !rest.starts_with('/') {
            target.push('/');
        }
        for b in rest.bytes() {
            if b.is_ascii_graphic() {
                target.push(char::from(b));
            } else {
                target.push_str(&format!("%{b:02X}"));
            }
        }
        Ok(Url {
            scheme,
            host,
            port,
            target,
        })
    }

    /// The `Host` header's value: the host, and the port unless it is the scheme's own.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.scheme.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}{}",
            self.scheme.name(),
            self.host_header(),
            self.target
        )
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → the host (lowercase, brackets off) and the
/// port's text, if any.
fn split_host_port(authority: &str) -> Result<(String, Option<&str>), UrlError> {
    if authority.is_empty() {
        return Err(UrlError::NoHost);
    }
    let bad = || UrlError::Host(authority.chars().take(64).collect());
    if let Some(inner) = authority.strip_prefix('[') {
        let (v6, after) = inner.split_once(']').ok_or_else(bad)?;
        let ip: std::net::Ipv6Addr = v6.parse().map_err(|_| bad())?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or_else(bad)?),
        };
        return Ok((ip.to_string(), port));
    }
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.');
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    if !host.bytes().all(plain) || host.starts_with('.') || host.contains("..") {
        return Err(bad());
    }
    Ok((host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn urls_are_taken_apart() {
        let u = url("http://127.0.0.1:9100/metrics");
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.target.as_str()),
            (Scheme::Http, "127.0.0.1", 9100, "/metrics")
        );
        assert_eq!(u.host_header(), "127.0.0.1:9100");
        let u = url("HTTPS://Example.ORG");
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port, u.target.as_str()),
            (Scheme::Https, "example.org", 443, "/")
        );
        assert_eq!(u.host_header(), "example.org");
        let u = url("https://example.org:443?q=1#frag");
        assert_eq!((u.port, u.target.as_str()), (443, "/?q=1"));
        assert_eq!(u.to_string(), "https://example.org/?q=1");
        let u = url("http://[::1]:8080/a/b?x=y&z");
        assert_eq!(
            (u.host.as_str(), u.port, u.target.as_str()),
            ("::1", 8080, "/a/b?x=y&z")
        );
        assert_eq!(u.host_header(), "[::1]:8080");
        let u = url("http://[2001:db8::1]/");
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 80));
        assert_eq!(u.host_header(), "[2001:db8::1]");
        // An empty port is the scheme's (RFC 3986).
        assert_eq!(url("http://h:/x").port, 80);
    }

    #[test]
    fn nothing_in_a_url_can_add_a_line_to_the_request() {
        let u = url("http://h/a b\r\nX-Evil: 1\r\n\r\nGET /c?é");
        assert_eq!(
            u.target,
            "/a%20b%0D%0AX-Evil:%201%0D%0A%0D%0AGET%20/c?%C3%A9"
        );
        assert!(u.target.bytes().all(|b| b.is_ascii_graphic()));
    }

    #[test]
    fn other_urls_are_refused_saying_why() {
        for (text, says) in [
            ("ftp://h/x", "not an http:// or https:// URL"),
            ("file:///etc/passwd", "not an http:// or https:// URL"),
            ("127.0.0.1:9100/metrics", "not an http:// or https:// URL"),
            ("http://", "no host"),
            ("http:///x", "no host"),
            ("http://:80/x", "no host"),
            ("http://user:pw@h/x", "credentials"),
            ("http://h:0/", "bad port"),
            ("http://h:65536/", "bad port"),
            ("http://h:+80/", "bad port"),
            ("http://h:x/", "bad port"),
            ("http://ex ample.org/", "bad host"),
            ("http://bücher.de/", "bad host"),
            ("http://[::1/", "bad host"),
            ("http://[nope]/", "bad host"),
            ("http://[::1]x/", "bad host"),
            ("http://a..b/", "bad host"),
        ] {
            let e = Url::parse(text).expect_err(text).to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
