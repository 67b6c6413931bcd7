//! deb822 control-file parsing (Packages, Release, dpkg status, .sources).

use std::collections::BTreeMap;

/// One paragraph: field names keep their case; lookups ignore it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paragraph {
    fields: Vec<(String, String)>,
    /// 1-based line where the paragraph starts, for error messages.
    pub line: usize,
}

impl Paragraph {
    /// The value of a field (case-insensitive name); continuation lines are joined with `\n`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All fields in file order.
    pub fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Fields as a map keyed by lowercase name.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.fields
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect()
    }

    /// Append a field (used when writing dpkg status).
    pub fn push(&mut self, name: &str, value: &str) {
        self.fields.push((name.to_string(), value.to_string()));
    }
}

/// A line that is neither a field, a continuation, a comment nor blank.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: malformed control field `{text}`")]
pub struct ControlError {
    /// 1-based line number.
    pub line: usize,
    /// The offending line, truncated.
    pub text: String,
}

/// Parse every paragraph of a deb822 document.
pub fn parse(text: &str) -> Result<Vec<Paragraph>, ControlError> {
    let mut out = Vec::new();
    let mut cur = Paragraph::default();
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            if !cur.fields.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            let Some((_, value)) = cur.fields.last_mut() else {
                return Err(bad(idx, line));
            };
            let cont = line.trim();
            value.push('\n');
            if cont != "." {
                value.push_str(cont);
            }
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(bad(idx, line));
        };
        if cur.fields.is_empty() {
            cur.line = idx + 1;
        }
        cur.fields
            .push((name.trim().to_string(), value.trim().to_string()));
    }
    if !cur.fields.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

fn bad(idx: usize, line: &str) -> ControlError {
    ControlError {
        line: idx + 1,
        text: line.chars().take(80).collect(),
    }
}

/// Render paragraphs back to deb822 text (multi-line values are continued with a space).
pub fn render(paragraphs: &[Paragraph]) -> String {
    let mut out = String::new();
    for (i, p) in paragraphs.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        for (k, v) in &p.fields {
            out.push_str(k);
            out.push(':');
            for (j, part) in v.split('\n').enumerate() {
                if j == 0 {
                    if !part.is_empty() {
                        out.push(' ');
                        out.push_str(part);
                    }
                } else {
                    out.push_str("\n ");
                    out.push_str(if part.is_empty() { "." } else { part });
                }
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paragraphs_and_continuations() {
        let text =
            "Package: a\nDescription: short\n long\n .\n more\n\n\nPackage: b\r\nVersion: 1\n";
        let ps = parse(text).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].get("package"), Some("a"));
        assert_eq!(ps[0].get("Description"), Some("short\nlong\n\nmore"));
        assert_eq!(ps[1].line, 8);
        assert_eq!(ps[1].get("Version"), Some("1"));
        let again = parse(&render(&ps)).unwrap();
        let fields = |ps: &[Paragraph]| ps.iter().map(|p| p.to_map()).collect::<Vec<_>>();
        assert_eq!(fields(&again), fields(&ps));
    }

    #[test]
    fn rejects_garbage_with_line() {
        let err = parse("Package: a\nnot a field\n").unwrap_err();
        assert_eq!(err.line, 2);
    }
}
