//! Hostile bytes: the bucket listing XML (`ListObjectVersions`) fed structured garbage.
//!
//! Documents are `ListVersionsResult`s of the right shape whose elements hold hostile text
//! (sizes past `u64`, dates that are not dates, character references to no character, unknown
//! entities, CDATA), with elements missing, nested where they should not be, or closed without
//! being opened; then damaged byte by byte; and some are random bytes. Nothing may panic, and
//! every error names the bucket listed.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index as At;

use crate::versions::parse_version_page;

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9/._-]{0,20}",
        1 => Just("18446744073709551616".to_owned()),
        1 => Just("-1".to_owned()),
        1 => Just("2009-10-12T17:50:30.000Z".to_owned()),
        1 => Just("+275760-09-13T00:00:00Z".to_owned()),
        1 => Just("true".to_owned()),
        1 => Just("&#xFFFFFFFF;".to_owned()),
        1 => Just("&#0;".to_owned()),
        1 => Just("&#x110000;".to_owned()),
        1 => Just("&unknown;".to_owned()),
        1 => Just("&amp;&lt;&quot;".to_owned()),
        1 => Just("<![CDATA[x]]>".to_owned()),
        1 => Just("<Version>".to_owned()),
        1 => Just("</Version>".to_owned()),
        1 => "\\PC{0,10}",
    ]
}

fn element() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec![
        "Key",
        "VersionId",
        "IsLatest",
        "LastModified",
        "ETag",
        "Size",
        "Owner",
        "Version",
        "DeleteMarker",
        "StorageClass",
    ]);
    (name, text(), 0u8..4).prop_map(|(name, text, shape)| match shape {
        0 => format!("<{name}>{text}</{name}>"),
        1 => format!("<{name}/>"),
        2 => format!("<{name}>{text}"),
        _ => format!("{text}</{name}>"),
    })
}

fn entry() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("Version"), Just("DeleteMarker")],
        vec(element(), 0..8),
        any::<bool>(),
    )
        .prop_map(|(tag, elements, closed)| {
            let mut x = format!("<{tag}>");
            x.push_str(&elements.concat());
            if closed {
                x.push_str(&format!("</{tag}>"));
            }
            x
        })
}

fn document() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just("true"), Just("false"), Just("maybe")],
        prop::option::of(text()),
        prop::option::of(text()),
        vec(entry(), 0..5),
        vec((any::<At>(), 1u8..=255), 0..3),
        any::<Option<At>>(),
        prop::option::weighted(0.05, vec(any::<u8>(), 0..300)),
    )
        .prop_map(
            |(truncated, key_marker, version_marker, entries, flips, cut, random)| {
                if let Some(r) = random {
                    return r;
                }
                let mut x = String::from(
                    r#"<?xml version="1.0" encoding="UTF-8"?><ListVersionsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>"#,
                );
                x.push_str(&format!("<IsTruncated>{truncated}</IsTruncated>"));
                if let Some(k) = key_marker {
                    x.push_str(&format!("<NextKeyMarker>{k}</NextKeyMarker>"));
                }
                if let Some(v) = version_marker {
                    x.push_str(&format!("<NextVersionIdMarker>{v}</NextVersionIdMarker>"));
                }
                x.push_str(&entries.concat());
                x.push_str("</ListVersionsResult>");
                let mut b = x.into_bytes();
                for (i, f) in flips {
                    let at = i.index(b.len());
                    b[at] ^= f;
                }
                if let Some(c) = cut {
                    b.truncate(c.index(b.len()));
                }
                b
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_version_listing(xml in document()) {
        let location = "s3://hostile-bucket/prefix";
        if let Err(e) = parse_version_page(location, &xml) {
            prop_assert!(e.to_string().contains(location), "{e}");
        }
    }
}
