//! The broker addresses one [`Bus`](super::Bus) connects to, in turn.
//!
//! `AMQP_URL` is one AMQP URL or a comma-separated list of them, one per
//! node of a RabbitMQ cluster. All share one vhost and one set of
//! credentials, so an entry after the first may give only `host:port`; it
//! takes the scheme, credentials, vhost and query of the first:
//!
//! ```text
//! amqp://app:secret@rabbit-0:5672/prod,rabbit-1:5672,rabbit-2:5672
//! ```
//!
//! Connecting tries the addresses in turn, starting after the one that was
//! last lost, so a surviving node is used on the next attempt.

/// A non-empty list of AMQP URLs and the one to try next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    urls: Vec<String>,
    next: usize,
}

impl Addresses {
    /// Parses a comma-separated list; blank entries are ignored. An empty
    /// list is kept as the one (empty) URL, which fails at connect time
    /// with lapin's own error.
    pub fn parse(list: &str) -> Self {
        let mut entries = list.split(',').map(str::trim).filter(|e| !e.is_empty());
        let Some(first) = entries.next() else {
            return Self {
                urls: vec![String::new()],
                next: 0,
            };
        };
        let parts = UrlParts::of(first);
        let mut urls = vec![first.to_owned()];
        for entry in entries {
            if entry.contains("://") {
                urls.push(entry.to_owned());
            } else {
                urls.push(format!(
                    "{}://{}{}{}",
                    parts.scheme, parts.userinfo, entry, parts.rest
                ));
            }
        }
        Self { urls, next: 0 }
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The URL to try now; the following call gives the next one.
    pub fn next_url(&mut self) -> &str {
        let index = self.next % self.urls.len();
        self.next = (index + 1) % self.urls.len();
        &self.urls[index]
    }

    /// `host:port` of each address, without credentials, for logs.
    pub fn hosts(&self) -> Vec<String> {
        self.urls.iter().map(|u| host_of(u).to_owned()).collect()
    }
}

/// `host:port` of a URL, without the scheme, credentials or vhost: safe to
/// log.
pub fn host_of(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = after_scheme
        .split(['/', '?'])
        .next()
        .unwrap_or(after_scheme);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

struct UrlParts<'a> {
    scheme: &'a str,
    /// `user:pass@` or empty.
    userinfo: &'a str,
    /// `/vhost?query` or empty.
    rest: &'a str,
}

impl<'a> UrlParts<'a> {
    fn of(url: &'a str) -> Self {
        let (scheme, after) = url.split_once("://").unwrap_or(("amqp", url));
        let authority_end = after.find(['/', '?']).unwrap_or(after.len());
        let (authority, rest) = after.split_at(authority_end);
        let userinfo = authority.rfind('@').map_or("", |at| &authority[..=at]);
        Self {
            scheme,
            userinfo,
            rest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_is_used_every_time() {
        let mut a = Addresses::parse("amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(a.len(), 1);
        for _ in 0..3 {
            assert_eq!(a.next_url(), "amqp://guest:guest@127.0.0.1:5672/%2f");
        }
    }

    #[test]
    fn addresses_are_tried_in_turn_and_wrap_around() {
        let mut a = Addresses::parse("amqp://a:1/v, amqp://b:2/v ,amqp://c:3/v");
        let seen: Vec<String> = (0..7).map(|_| a.next_url().to_owned()).collect();
        assert_eq!(
            seen,
            [
                "amqp://a:1/v",
                "amqp://b:2/v",
                "amqp://c:3/v",
                "amqp://a:1/v",
                "amqp://b:2/v",
                "amqp://c:3/v",
                "amqp://a:1/v"
            ]
        );
    }

    #[test]
    fn short_entries_take_credentials_and_vhost_from_the_first() {
        let a = Addresses::parse(
            "amqps://app:s3cret@rabbit-0:5671/prod?heartbeat=10,rabbit-1:5671,,rabbit-2:5671",
        );
        assert_eq!(
            a.urls,
            [
                "amqps://app:s3cret@rabbit-0:5671/prod?heartbeat=10",
                "amqps://app:s3cret@rabbit-1:5671/prod?heartbeat=10",
                "amqps://app:s3cret@rabbit-2:5671/prod?heartbeat=10",
            ]
        );
        assert_eq!(
            a.hosts(),
            ["rabbit-0:5671", "rabbit-1:5671", "rabbit-2:5671"]
        );
    }

    #[test]
    fn a_first_url_without_credentials_or_vhost_still_expands() {
        let a = Addresses::parse("amqp://h1:5701,h2:5702");
        assert_eq!(a.urls, ["amqp://h1:5701", "amqp://h2:5702"]);
    }

    #[test]
    fn hosts_never_show_the_password() {
        assert_eq!(host_of("amqp://u:p@w@h:1/%2f"), "h:1");
        assert_eq!(host_of("amqp://h:1"), "h:1");
    }

    #[test]
    fn an_empty_list_is_one_empty_address() {
        let mut a = Addresses::parse(" , ");
        assert_eq!(a.len(), 1);
        assert_eq!(a.next_url(), "");
    }
}
