//! RDS Query-API answers (XML) read as flat records: every element named `element` becomes a
//! map from its leaf fields' paths (`Status`, `Endpoint.Address`) to their text. RDS answers
//! are regular enough that the typed views ([`super::model`]) need nothing more.

use std::collections::BTreeMap;

use quick_xml::events::Event;

/// One element's leaf fields, by path below it (`Endpoint.Address`).
pub type Fields = BTreeMap<String, String>;

/// Every `element` in `xml` (outermost ones; one nested in another is part of the outer).
pub fn records(xml: &[u8], element: &str) -> Result<Vec<Fields>, String> {
    let mut reader = quick_xml::Reader::from_reader(xml);
    let mut out = Vec::new();
    // Inside a record: the current path below it, and the fields read so far.
    let mut current: Option<(Vec<String>, Fields)> = None;
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                match current.as_mut() {
                    Some((path, _)) => path.push(name),
                    None if name == element => current = Some((Vec::new(), Fields::new())),
                    None => {}
                }
            }
            Event::Empty(e) => {
                if let Some((path, fields)) = current.as_mut() {
                    let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                    path.push(name);
                    fields.entry(path.join(".")).or_default();
                    path.pop();
                }
            }
            Event::Text(t) => {
                if let Some((path, fields)) = current.as_mut() {
                    if !path.is_empty() {
                        let text = t.xml_content().map_err(|e| e.to_string())?;
                        fields.entry(path.join(".")).or_default().push_str(&text);
                    }
                }
            }
            Event::GeneralRef(r) => {
                if let Some((path, fields)) = current.as_mut() {
                    if !path.is_empty() {
                        let text = resolve_reference(&r)?;
                        fields.entry(path.join(".")).or_default().push_str(&text);
                    }
                }
            }
            Event::CData(t) => {
                if let Some((path, fields)) = current.as_mut() {
                    if !path.is_empty() {
                        fields
                            .entry(path.join("."))
                            .or_default()
                            .push_str(&String::from_utf8_lossy(&t));
                    }
                }
            }
            Event::End(_) => {
                if let Some((path, _)) = current.as_mut() {
                    if path.pop().is_none() {
                        let (_, fields) = current.take().expect("inside a record");
                        out.push(fields);
                    }
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if current.is_some() {
        return Err(format!("the answer ends inside <{element}>"));
    }
    Ok(out)
}

/// The text of an entity or character reference (`&amp;`, `&#38;`).
fn resolve_reference(r: &quick_xml::events::BytesRef<'_>) -> Result<String, String> {
    if let Some(c) = r.resolve_char_ref().map_err(|e| e.to_string())? {
        return Ok(c.to_string());
    }
    let name = r.decode().map_err(|e| e.to_string())?.into_owned();
    quick_xml::escape::resolve_xml_entity(&name)
        .map(str::to_owned)
        .ok_or_else(|| format!("unknown entity &{name};"))
}

/// AWS' error code and message from an error answer (`<Error><Code>…<Message>…`), or `None`
/// when the answer is not one.
pub fn error(xml: &[u8]) -> Option<(String, String)> {
    let first = records(xml, "Error").ok()?.into_iter().next()?;
    let code = first.get("Code")?.clone();
    Some((code, first.get("Message").cloned().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_fields_get_paths_and_entities_are_resolved() {
        let xml = br#"<R xmlns="x"><Items><DBInstance><DBInstanceIdentifier>a&amp;b</DBInstanceIdentifier>
            <Endpoint><Address>h</Address><Port>5432</Port></Endpoint><TagList/></DBInstance>
            <DBInstance><DBInstanceIdentifier>c</DBInstanceIdentifier></DBInstance></Items></R>"#;
        let r = records(xml, "DBInstance").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0]["DBInstanceIdentifier"], "a&b");
        assert_eq!(r[0]["Endpoint.Address"], "h");
        assert_eq!(r[0]["Endpoint.Port"], "5432");
        assert_eq!(r[0]["TagList"], "");
        assert_eq!(r[1]["DBInstanceIdentifier"], "c");
    }

    #[test]
    fn error_answers_give_code_and_message() {
        let xml = br#"<ErrorResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/"><Error><Type>Sender</Type><Code>DBSnapshotNotFound</Code><Message>DBSnapshot nope not found.</Message></Error><RequestId>x</RequestId></ErrorResponse>"#;
        assert_eq!(
            error(xml),
            Some((
                "DBSnapshotNotFound".into(),
                "DBSnapshot nope not found.".into()
            ))
        );
        assert_eq!(error(b"<html>502</html>"), None);
    }

    #[test]
    fn a_truncated_answer_is_an_error() {
        assert!(records(b"<A><DBSnapshot><Status>x</Status>", "DBSnapshot").is_err());
    }
}
