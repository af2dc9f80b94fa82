//! How an object's attributes (content type, user metadata, ETag, last-modified time) become an
//! entry's attributes in a snapshot, and back into object attributes on restore.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use object_store::{Attribute, AttributeValue, Attributes};

/// The attributes an object carries into its entry.
pub(super) fn entry_attrs(
    e_tag: Option<&String>,
    last_modified: DateTime<Utc>,
    attributes: &Attributes,
) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    if let Some(e) = e_tag {
        attrs.insert("etag".into(), e.clone());
    }
    attrs.insert("last_modified".into(), last_modified.to_rfc3339());
    for (k, v) in attributes.iter() {
        let name = match k {
            Attribute::ContentType => "content_type".to_owned(),
            Attribute::ContentEncoding => "content_encoding".to_owned(),
            Attribute::ContentDisposition => "content_disposition".to_owned(),
            Attribute::ContentLanguage => "content_language".to_owned(),
            Attribute::CacheControl => "cache_control".to_owned(),
            Attribute::Metadata(m) => format!("meta.{m}"),
            _ => continue,
        };
        attrs.insert(name, v.as_ref().to_owned());
    }
    attrs
}

/// The object attributes an entry's attributes describe: exactly the original's content type,
/// encoding, disposition, language, cache control and user metadata, nothing added.
pub(super) fn object_attributes(attrs: &BTreeMap<String, String>) -> Attributes {
    let mut out = Attributes::new();
    for (k, v) in attrs {
        let key = match k.as_str() {
            "content_type" => Attribute::ContentType,
            "content_encoding" => Attribute::ContentEncoding,
            "content_disposition" => Attribute::ContentDisposition,
            "content_language" => Attribute::ContentLanguage,
            "cache_control" => Attribute::CacheControl,
            other => match other.strip_prefix("meta.") {
                Some(m) => Attribute::Metadata(m.to_owned().into()),
                None => continue,
            },
        };
        out.insert(key, AttributeValue::from(v.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_through_entries() {
        let mut a = Attributes::new();
        a.insert(Attribute::ContentType, "text/csv".into());
        a.insert(Attribute::ContentEncoding, "gzip".into());
        a.insert(Attribute::CacheControl, "no-cache".into());
        a.insert(Attribute::Metadata("owner".into()), "billing".into());
        let attrs = entry_attrs(Some(&"\"abc\"".into()), Utc::now(), &a);
        assert_eq!(attrs["content_type"], "text/csv");
        assert_eq!(attrs["meta.owner"], "billing");
        let back = object_attributes(&attrs);
        assert_eq!(
            back.get(&Attribute::ContentType).unwrap().as_ref(),
            "text/csv"
        );
        assert_eq!(back.len(), a.len(), "nothing added: {back:?}");
        for (k, v) in a.iter() {
            assert_eq!(back.get(k), Some(v), "{k:?}");
        }
    }
}
