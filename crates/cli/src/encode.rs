//! How records and listings are printed: JSON lines (`--output json`) and readable text.
//! Pure string building, so the formats are unit-tested here.

use std::fmt::Write as _;

use crate::time::format_rfc3339_ms;

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (RFC 4648 §4) with `=` padding.
pub fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let sextets = [n >> 18, n >> 12, n >> 6, n];
        // A chunk of k bytes gives k + 1 characters; the rest of the quad is padding.
        for (i, s) in sextets.iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(BASE64_ALPHABET[(s & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A JSON string literal.
pub fn json_string(text: &str) -> String {
    // Serializing a str cannot fail.
    serde_json::to_string(text).unwrap_or_else(|_| String::from("\"\""))
}

/// One consumed record, owned (it outlives the fetched payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub partition: u32,
    pub offset: u64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// `,"name":"text"` for UTF-8 bytes, `,"name_base64":"..."` for other bytes,
/// `,"name":null` for a null field.
fn push_bytes_field(out: &mut String, name: &str, bytes: Option<&[u8]>) {
    match bytes.map(std::str::from_utf8) {
        None => {
            let _ = write!(out, ",\"{name}\":null");
        }
        Some(Ok(text)) => {
            let _ = write!(out, ",\"{name}\":{}", json_string(text));
        }
        Some(Err(_)) => {
            let b64 = base64(bytes.unwrap_or_default());
            let _ = write!(out, ",\"{name}_base64\":\"{b64}\"");
        }
    }
}

/// The `--output json` line of a consumed record (no newline).
pub fn record_json(topic: &str, r: &Rec) -> String {
    let mut out = String::with_capacity(96 + r.value.as_ref().map_or(0, Vec::len));
    let _ = write!(
        out,
        "{{\"topic\":{},\"partition\":{},\"offset\":{},\"timestamp\":{}",
        json_string(topic),
        r.partition,
        r.offset,
        r.timestamp
    );
    push_bytes_field(&mut out, "key", r.key.as_deref());
    push_bytes_field(&mut out, "value", r.value.as_deref());
    out.push('}');
    out
}

/// Bytes for a terminal: UTF-8 with control characters escaped (`\n`, `\t`, `\u{1b}`),
/// other bytes as `\xNN`. `None` is `(null)`.
pub fn printable(bytes: Option<&[u8]>) -> String {
    let Some(bytes) = bytes else {
        return "(null)".to_owned();
    };
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.chars().any(char::is_control) => text.to_owned(),
        Ok(text) => text
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
        Err(_) => bytes.escape_ascii().to_string(),
    }
}

/// The readable line of a consumed record (no newline):
/// `PARTITION:OFFSET  TIMESTAMP  [key=KEY  ]VALUE`.
pub fn record_text(r: &Rec) -> String {
    let mut out = format!(
        "{}:{}  {}  ",
        r.partition,
        r.offset,
        format_rfc3339_ms(r.timestamp)
    );
    if r.key.is_some() {
        let _ = write!(out, "key={}  ", printable(r.key.as_deref()));
    }
    out.push_str(&printable(r.value.as_deref()));
    out
}

/// Rows under headers, each column padded to its widest cell, two spaces apart, trailing
/// spaces trimmed; one line per row, each ending in `\n`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        assert_eq!(row.len(), headers.len(), "cli: table row width");
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<w$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `Some(n)` as `n`, `None` as `-`.
pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0x00]), "//4A");
    }

    #[test]
    fn json_records_choose_text_or_base64() {
        let r = Rec {
            partition: 3,
            offset: 17,
            timestamp: 1_700_000_000_000,
            key: Some(b"k\"1".to_vec()),
            value: Some(vec![0xff, 0x00]),
        };
        let line = record_json("t", &r);
        assert_eq!(
            line,
            r#"{"topic":"t","partition":3,"offset":17,"timestamp":1700000000000,"key":"k\"1","value_base64":"/wA="}"#
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["key"], "k\"1");
        let r = Rec {
            key: None,
            value: Some(b"hello\n".to_vec()),
            ..r
        };
        let v: serde_json::Value = serde_json::from_str(&record_json("t", &r)).unwrap();
        assert!(v["key"].is_null());
        assert_eq!(v["value"], "hello\n");
    }

    #[test]
    fn text_escapes_what_would_break_a_line() {
        assert_eq!(printable(Some(b"plain text")), "plain text");
        assert_eq!(printable(Some(b"a\nb\tc")), "a\\nb\\tc");
        assert_eq!(printable(Some(&[b'a', 0xff])), "a\\xff");
        assert_eq!(printable(None), "(null)");
        let r = Rec {
            partition: 0,
            offset: 5,
            timestamp: 0,
            key: Some(b"user".to_vec()),
            value: Some(b"hi".to_vec()),
        };
        assert_eq!(
            record_text(&r),
            "0:5  1970-01-01T00:00:00.000Z  key=user  hi"
        );
    }

    #[test]
    fn tables_pad_columns() {
        let t = table(
            &["NAME", "N"],
            &[
                vec!["a".into(), "10".into()],
                vec!["long-name".into(), "2".into()],
            ],
        );
        assert_eq!(t, "NAME       N\na          10\nlong-name  2\n");
    }
}
