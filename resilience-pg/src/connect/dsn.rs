//! Connection strings: libpq's key=value form (quoting and escapes) and `postgres://` URLs,
//! the TLS parameters taken out of them before they reach the driver, and their redaction for
//! messages.

/// The TLS parameters pulled out of a DSN.
#[derive(Default)]
pub(super) struct TlsParams {
    pub(super) mode: Option<String>,
    pub(super) root_cert: Option<String>,
    pub(super) cert: Option<String>,
    pub(super) key: Option<String>,
}

impl TlsParams {
    /// Takes the parameter if it is one of ours.
    fn take(&mut self, key: &str, value: &str) -> bool {
        let slot = match key {
            "sslmode" => &mut self.mode,
            "sslrootcert" => &mut self.root_cert,
            "sslcert" => &mut self.cert,
            "sslkey" => &mut self.key,
            _ => return false,
        };
        *slot = Some(value.to_owned());
        true
    }
}

/// Splits a key=value DSN into its pairs (values unquoted).
fn key_values(dsn: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("expected `=` after {key:?}"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated quoted value of {key:?}")),
                    Some('\'') => break,
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(format!("unterminated quoted value of {key:?}")),
                    },
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        value.push(next);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Removes the TLS parameters from a DSN, returning what is left for the driver.
pub(super) fn strip_tls(dsn: &str, tls: &mut TlsParams) -> Result<String, String> {
    let trimmed = dsn.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = trimmed.split_once('?') else {
            return Ok(trimmed.to_owned());
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_encoding::percent_decode_str(k).decode_utf8_lossy();
            let value = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
            if !tls.take(&key, &value) {
                kept.push(pair);
            }
        }
        Ok(if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        })
    } else {
        let mut kept = Vec::new();
        for (k, v) in key_values(trimmed)? {
            if !tls.take(&k, &v) {
                kept.push(format!("{k}={}", quote(&v)));
            }
        }
        Ok(kept.join(" "))
    }
}

/// A DSN without its password, for messages and records: `password=…` and the password of a
/// URL's user info are replaced by `***`.
pub fn redact(dsn: &str) -> String {
    let trimmed = dsn.trim();
    if let Some(scheme_end) = trimmed.find("://") {
        let after = scheme_end + 3;
        let authority_end = trimmed[after..]
            .find(['/', '?'])
            .map_or(trimmed.len(), |i| after + i);
        let mut out = trimmed.to_owned();
        if let Some(at) = trimmed[after..authority_end].rfind('@') {
            let userinfo = &trimmed[after..after + at];
            if let Some(colon) = userinfo.find(':') {
                out = format!(
                    "{}***{}",
                    &trimmed[..after + colon + 1],
                    &trimmed[after + at..]
                );
            }
        }
        // A password may also come as a query parameter.
        if let Some((base, query)) = out.clone().split_once('?') {
            let query: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k == "password" => format!("{k}=***"),
                    _ => p.to_owned(),
                })
                .collect();
            out = format!("{base}?{}", query.join("&"));
        }
        out
    } else {
        match key_values(trimmed) {
            Ok(pairs) => pairs
                .into_iter()
                .map(|(k, v)| {
                    if k == "password" {
                        format!("{k}=***")
                    } else {
                        format!(
                            "{k}={}",
                            if v.contains(char::is_whitespace) {
                                quote(&v)
                            } else {
                                v
                            }
                        )
                    }
                })
                .collect::<Vec<_>>()
                .join(" "),
            Err(_) => "(unparsable connection string)".into(),
        }
    }
}

/// A DSN kept by a source or target: its `Debug` shows it without the password.
#[derive(Clone)]
pub(crate) struct Dsn(String);

impl Dsn {
    pub(crate) fn new(dsn: impl Into<String>) -> Self {
        Dsn(dsn.into())
    }
}

impl std::ops::Deref for Dsn {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Dsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", redact(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(
            redact("host=h user=u password=hunter2 dbname=x"),
            "host=h user=u password=*** dbname=x"
        );
        assert_eq!(
            redact("postgres://u:hunter2@h:5432/db?sslmode=require"),
            "postgres://u:***@h:5432/db?sslmode=require"
        );
        assert_eq!(
            redact("postgresql://h/db?user=u&password=hunter2"),
            "postgresql://h/db?user=u&password=***"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
