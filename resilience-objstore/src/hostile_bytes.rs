//! Hostile bytes: the bucket listings fed structured garbage — S3's `ListObjectVersions` and
//! `ListObjectsV2`, Azure's List Blobs (XML) and GCS's JSON listing.
//!
//! XML documents have the right root and entries whose elements hold hostile text (sizes past
//! `u64`, dates that are not dates, character references to no character, unknown entities,
//! CDATA, percent-encoding that is not UTF-8), with elements missing, nested where they should
//! not be, or closed without being opened; then damaged byte by byte; and some are random
//! bytes. JSON listings have items whose fields have the wrong types or hostile values. Nothing
//! may panic; the version listing's errors name the bucket (the others' callers name it).

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index as At;

use crate::azure_exact::parse_blob_page;
use crate::gcs_exact::parse_list_response;
use crate::s3_exact::parse_list_page;
use crate::versions::parse_version_page;

/// The shape of one kind of listing document.
struct Shape {
    root: &'static str,
    /// The element around the entries (Azure's `Blobs`), if any.
    list: Option<&'static str>,
    entries: &'static [&'static str],
    fields: &'static [&'static str],
    /// Elements after the entries (markers, tokens).
    trailer: &'static [&'static str],
}

const VERSIONS: Shape = Shape {
    root: "ListVersionsResult",
    list: None,
    entries: &["Version", "DeleteMarker"],
    fields: &[
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
    ],
    trailer: &["NextKeyMarker", "NextVersionIdMarker", "EncodingType"],
};

const OBJECTS: Shape = Shape {
    root: "ListBucketResult",
    list: None,
    entries: &["Contents"],
    fields: &[
        "Key",
        "LastModified",
        "ETag",
        "Size",
        "StorageClass",
        "Contents",
    ],
    trailer: &["NextContinuationToken", "EncodingType", "KeyCount"],
};

const BLOBS: Shape = Shape {
    root: "EnumerationResults",
    list: Some("Blobs"),
    entries: &["Blob"],
    fields: &[
        "Name",
        "Properties",
        "Last-Modified",
        "Etag",
        "Content-Length",
        "Content-Type",
        "Metadata",
        "Blob",
    ],
    trailer: &["NextMarker", "Prefix"],
};

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
        1 => Just("%FF%C3%28".to_owned()),
        1 => Just("%2Flead%2F%2F%01".to_owned()),
        1 => "\\PC{0,10}",
    ]
}

fn element(names: &'static [&'static str]) -> impl Strategy<Value = String> {
    (prop::sample::select(names), text(), 0u8..5).prop_map(|(name, text, shape)| match shape {
        0 => format!("<{name}>{text}</{name}>"),
        1 => format!("<{name}/>"),
        2 => format!("<{name}>{text}"),
        3 => format!("<{name} Encoded=\"true\">{text}</{name}>"),
        _ => format!("{text}</{name}>"),
    })
}

fn entry(shape: &'static Shape) -> impl Strategy<Value = String> {
    (
        prop::sample::select(shape.entries),
        vec(element(shape.fields), 0..8),
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

fn document(shape: &'static Shape) -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![Just("true"), Just("false"), Just("maybe")],
        vec((prop::sample::select(shape.trailer), text()), 0..3),
        vec(entry(shape), 0..5),
        vec((any::<At>(), 1u8..=255), 0..3),
        any::<Option<At>>(),
        prop::option::weighted(0.05, vec(any::<u8>(), 0..300)),
    )
        .prop_map(move |(truncated, trailer, entries, flips, cut, random)| {
            if let Some(r) = random {
                return r;
            }
            let root = shape.root;
            let mut x = format!(
                r#"<?xml version="1.0" encoding="UTF-8"?><{root} xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name>"#
            );
            x.push_str(&format!("<IsTruncated>{truncated}</IsTruncated>"));
            let entries = entries.concat();
            match shape.list {
                Some(list) => x.push_str(&format!("<{list}>{entries}</{list}>")),
                None => x.push_str(&entries),
            }
            for (name, value) in trailer {
                x.push_str(&format!("<{name}>{value}</{name}>"));
            }
            x.push_str(&format!("</{root}>"));
            let mut b = x.into_bytes();
            for (i, f) in flips {
                let at = i.index(b.len());
                b[at] ^= f;
            }
            if let Some(c) = cut {
                b.truncate(c.index(b.len()));
            }
            b
        })
}

/// A GCS listing: items whose fields have hostile values or the wrong types.
fn gcs_listing() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just(serde_json::json!("18446744073709551616")),
        Just(serde_json::json!("-1")),
        Just(serde_json::json!("2026-12-03T10:00:00Z")),
        Just(serde_json::json!("not a date")),
        Just(serde_json::json!(12)),
        Just(serde_json::json!(null)),
        Just(serde_json::json!({"k": [1, 2]})),
        Just(serde_json::json!("rL0Y20zC+Fzt72VPzMSk2A==")),
        Just(serde_json::json!("%%%")),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
    ];
    let field = prop::sample::select(vec![
        "name",
        "size",
        "updated",
        "md5Hash",
        "etag",
        "generation",
        "contentType",
        "metadata",
    ]);
    let item = prop::collection::btree_map(field, value.clone(), 0..8);
    (
        vec(item, 0..4),
        prop::option::of(value),
        vec((any::<At>(), 1u8..=255), 0..2),
    )
        .prop_map(|(items, token, flips)| {
            let mut doc = serde_json::json!({"kind": "storage#objects", "items": items});
            if let Some(t) = token {
                doc["nextPageToken"] = t;
            }
            let mut b = serde_json::to_vec(&doc).expect("JSON");
            for (i, f) in flips {
                let at = i.index(b.len());
                b[at] ^= f;
            }
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_version_listing(xml in document(&VERSIONS)) {
        let location = "s3://hostile-bucket/prefix";
        if let Err(e) = parse_version_page(location, &xml) {
            prop_assert!(e.to_string().contains(location), "{e}");
        }
    }

    #[test]
    fn hostile_object_listing(xml in document(&OBJECTS)) {
        if let Err(e) = parse_list_page(&xml) {
            prop_assert!(!e.is_empty());
        }
    }

    #[test]
    fn hostile_blob_listing(xml in document(&BLOBS)) {
        if let Err(e) = parse_blob_page(&xml) {
            prop_assert!(!e.is_empty());
        }
    }

    #[test]
    fn hostile_gcs_listing(json in gcs_listing()) {
        if let Err(e) = parse_list_response(&json) {
            prop_assert!(!e.is_empty());
        }
    }
}
