//! Records, data keys, lease keys and stale keys (readers/spec.md sections
//! 2, 3 and 6). Pure functions: the conformance vectors in
//! readers/vectors/ test them without Redis.

use crate::Error;

/// Versions are at most 2^63-1: Redis's own integer range (`HINCRBY`).
const MAX_VERSION: u64 = i64::MAX as u64;

/// Parses a version field's text. `Ok(None)`: the field is missing (the
/// caller decides what that means: `0` for `v` and `e`, none for `pv`).
pub fn parse_version(record: &str, field: &str, text: Option<&[u8]>) -> Result<Option<u64>, Error> {
    let Some(text) = text else { return Ok(None) };
    let bad = || Error::BadVersion {
        record: record.to_owned(),
        field: field.to_owned(),
        text: String::from_utf8_lossy(text).into_owned(),
    };
    let canonical = !text.is_empty()
        && text.len() <= 19
        && text.iter().all(u8::is_ascii_digit)
        && (text == b"0" || text.first() != Some(&b'0'));
    if !canonical {
        return Err(bad());
    }
    // ASCII digits only, at most 19 of them: fits u64, parses.
    let value: u64 = std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(bad)?;
    if value > MAX_VERSION {
        return Err(bad());
    }
    Ok(Some(value))
}

/// What one `get` reads and names: the cache key, its deps and namespaces
/// under a version prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub key: String,
    /// The version records read, in order: the epoch, the deps, the namespaces.
    pub records: Vec<String>,
    /// How many of `records[1..]` are deps (the rest are namespaces).
    pub deps: usize,
}

/// One record's fields as read: `v` (missing = 0) and `pv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fields {
    pub v: u64,
    pub pv: Option<u64>,
}

impl Layout {
    pub fn new(prefix: &str, key: &str, deps: Option<&[String]>, namespaces: &[String]) -> Result<Layout, Error> {
        let invalid = |why: &str| Error::InvalidOptions(format!("key {key:?}: {why}"));
        if key.is_empty() {
            return Err(invalid("empty cache key"));
        }
        let own = [key.to_owned()];
        let deps = deps.unwrap_or(&own);
        if deps.is_empty() {
            return Err(invalid(
                "deps is empty: a value that depends on no version record is never invalidated (leave deps out to mean the key itself)",
            ));
        }
        if deps.iter().any(String::is_empty) {
            return Err(invalid("an empty dependency name"));
        }
        if namespaces.iter().any(String::is_empty) {
            return Err(invalid("an empty namespace name"));
        }
        for dep in deps {
            if dep == "epoch" || dep.starts_with("ns:") {
                return Err(invalid(&format!(
                    "dependency {dep:?} is reserved (the epoch and namespace records)"
                )));
            }
        }
        let mut records = Vec::with_capacity(1 + deps.len() + namespaces.len());
        records.push(format!("{prefix}epoch"));
        records.extend(deps.iter().map(|d| format!("{prefix}{d}")));
        records.extend(namespaces.iter().map(|n| format!("{prefix}ns:{n}")));
        Ok(Layout {
            key: key.to_owned(),
            records,
            deps: deps.len(),
        })
    }

    /// `K@e<e>:v<..>...:n<..>...`; `versions` are the records after the epoch.
    pub fn data_key(&self, epoch: u64, versions: impl IntoIterator<Item = u64>) -> String {
        use std::fmt::Write;
        let mut out = format!("{}@e{epoch}", self.key);
        for (i, v) in versions.into_iter().enumerate() {
            let tag = if i < self.deps { 'v' } else { 'n' };
            let _ = write!(out, ":{tag}{v}");
        }
        out
    }

    /// The previous version's data key and the age of the last bump in µs
    /// at `now_us`, when there is one (spec section 6).
    pub fn stale_key(&self, epoch: u64, fields: &[Fields], now_us: u64) -> Option<(String, u64)> {
        let highest = fields.iter().map(|f| f.v).max()?;
        if highest == 0 || epoch >= highest {
            return None;
        }
        let mut at_highest = fields.iter().enumerate().filter(|(_, f)| f.v == highest);
        let (index, latest) = at_highest.next()?;
        if at_highest.next().is_some() {
            // Two records bumped to the same version: which one moved last is
            // unknown, so no key can be named as "the one before".
            return None;
        }
        let previous = latest.pv?;
        let key = self.data_key(
            epoch,
            fields
                .iter()
                .enumerate()
                .map(|(i, f)| if i == index { previous } else { f.v }),
        );
        Some((key, now_us.saturating_sub(highest)))
    }
}

pub fn lease_key(data_key: &str) -> String {
    format!("{data_key}:lease")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_dependencies_are_refused() {
        let ns = ["ns:product".to_owned()];
        assert!(matches!(
            Layout::new("ver:", "k", Some(&ns), &[]),
            Err(Error::InvalidOptions(_))
        ));
        assert!(Layout::new("ver:", "", None, &[]).is_err());
        assert!(Layout::new("ver:", "epoch", None, &[]).is_err());
    }

    #[test]
    fn empty_deps_and_empty_names_are_refused() {
        let refused = |deps: Option<&[String]>, namespaces: &[String]| match Layout::new("ver:", "k", deps, namespaces)
        {
            Err(Error::InvalidOptions(why)) => why,
            other => panic!("accepted: {other:?}"),
        };
        assert!(refused(Some(&[]), &[]).contains("deps is empty"));
        assert!(refused(Some(&["".to_owned()]), &[]).contains("empty dependency"));
        assert!(refused(None, &["".to_owned()]).contains("empty namespace"));
        assert!(Layout::new("ver:", "k", None, &["product".to_owned()]).is_ok());
    }
}
