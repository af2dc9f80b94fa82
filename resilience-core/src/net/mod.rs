//! Network plumbing that adapters share, with nothing store-specific in it: whether a host is
//! this machine (an adapter warns about a plain connection to any other) and, with the `tls`
//! feature, the pieces of a rustls client configuration (`net::tls`).

#[cfg(feature = "tls")]
pub mod tls;

use std::net::IpAddr;

/// Whether a host name or address is this machine: `localhost` or a loopback address (an IPv6
/// one with or without brackets).
pub fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback_host("localhost"));
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("::1"));
        assert!(!is_loopback_host("db.example"));
        assert!(!is_loopback_host("10.0.0.1"));
    }
}
