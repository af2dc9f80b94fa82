//! Redis' glob patterns (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), as `SCAN MATCH` and `KEYS` use them,
//! for filtering keys on restore.

/// Whether `key` matches `pattern`.
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    match pattern.split_first() {
        None => key.is_empty(),
        Some((b'*', rest)) => (0..=key.len()).any(|i| matches(rest, &key[i..])),
        Some((b'?', rest)) => !key.is_empty() && matches(rest, &key[1..]),
        Some((b'[', rest)) => {
            let Some((&c, key_rest)) = key.split_first() else {
                return false;
            };
            let (negate, mut p) = match rest.first() {
                Some(b'^') => (true, &rest[1..]),
                _ => (false, rest),
            };
            let mut hit = false;
            loop {
                match p {
                    [] => return false, // unterminated class: no match
                    [b']', tail @ ..] => {
                        p = tail;
                        break;
                    }
                    [b'\\', x, tail @ ..] => {
                        hit |= *x == c;
                        p = tail;
                    }
                    [a, b'-', z, tail @ ..] if *z != b']' => {
                        let (lo, hi) = if a <= z { (*a, *z) } else { (*z, *a) };
                        hit |= (lo..=hi).contains(&c);
                        p = tail;
                    }
                    [x, tail @ ..] => {
                        hit |= *x == c;
                        p = tail;
                    }
                }
            }
            hit != negate && matches(p, key_rest)
        }
        Some((b'\\', rest)) if !rest.is_empty() => {
            key.first() == Some(&rest[0]) && matches(&rest[1..], &key[1..])
        }
        Some((&c, rest)) => key.first() == Some(&c) && matches(rest, &key[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn redis_glob_semantics() {
        let m = |p: &str, k: &str| matches(p.as_bytes(), k.as_bytes());
        assert!(m("*", ""));
        assert!(m("user:*", "user:42"));
        assert!(!m("user:*", "session:42"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-c]llo", "hbllo"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("*:*:x", "a:b:x"));
    }
}
