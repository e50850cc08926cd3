//! What Redis answers, decoded without I/O. Every reply is checked against
//! the shape its script or command returns; a reply of another shape, a
//! version that is not canonical decimal text, or fewer replies than were
//! asked for is a [`ReplyError`], never a default value: a version read as
//! 0 would name the wrong data key in a notice, and a bump assumed applied
//! would acknowledge a batch Redis did not take.

use redis::Value;

use super::request::{BumpRequest, Extras};
use super::BumpResult;

/// The first element of an `epoch.lua` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EpochStatus {
    /// Check: the watermarks moved forward.
    Ok,
    /// Check: no epoch record.
    Missing,
    /// Check: a watermark went backwards.
    RolledBack,
    /// Advance: this call advanced the epoch.
    Advanced,
    /// Advance: another process had already advanced it past what this one
    /// saw; the reply carries that epoch.
    Adopted,
}

impl EpochStatus {
    pub(crate) fn parse(text: &str) -> Option<EpochStatus> {
        Some(match text {
            "ok" => EpochStatus::Ok,
            "missing" => EpochStatus::Missing,
            "rolled_back" => EpochStatus::RolledBack,
            "advanced" => EpochStatus::Advanced,
            "adopted" => EpochStatus::Adopted,
            _ => return None,
        })
    }
}

/// One reply of `epoch.lua`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EpochReply {
    pub(crate) status: EpochStatus,
    /// Canonical decimal text (`reply::version_number`), `0` when missing.
    pub(crate) epoch: String,
    pub(crate) own: i64,
    pub(crate) shared: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("redis answered {got} replies to {sent} {what}")]
    Short {
        what: &'static str,
        sent: usize,
        got: usize,
    },
    #[error("malformed {what} reply: {problem}")]
    Malformed { what: &'static str, problem: String },
}

/// Everything one bump pipeline answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PipelineReply {
    /// The watermark check's reply, when the pipeline carried it.
    pub(crate) check: Option<EpochReply>,
    /// One result per bump, in the order of the request's indices.
    pub(crate) results: Vec<BumpResult>,
    /// How many replicas `WAIT` counted, when the pipeline ended with it.
    pub(crate) replicas: Option<i64>,
}

/// Splits a pipeline's replies as `BumpRequest::pipeline` laid it out.
pub(crate) fn pipeline(values: Vec<Value>, request: &BumpRequest, extras: Extras) -> Result<PipelineReply, ReplyError> {
    let sent = request.calls.len() + usize::from(extras.check) + usize::from(extras.wait);
    if values.len() != sent {
        return Err(ReplyError::Short {
            what: "pipelined commands",
            sent,
            got: values.len(),
        });
    }
    let mut values = values.into_iter();
    let check = match extras.check {
        true => Some(epoch(next(&mut values, "epoch check")?)?),
        false => None,
    };
    let mut results = Vec::with_capacity(request.indices.len());
    for call in &request.calls {
        results.extend(bump_call(next(&mut values, "bump")?, call.keys.len())?);
    }
    let replicas = match extras.wait {
        true => Some(wait(next(&mut values, "WAIT")?)?),
        false => None,
    };
    Ok(PipelineReply {
        check,
        results,
        replicas,
    })
}

fn next(values: &mut impl Iterator<Item = Value>, what: &'static str) -> Result<Value, ReplyError> {
    values.next().ok_or(ReplyError::Short { what, sent: 1, got: 0 })
}

/// One `bump.lua` reply, `sent` keys: per key the new version (a string)
/// when applied, the integer 0 when the guard kept the record as it was.
pub(crate) fn bump_call(value: Value, sent: usize) -> Result<Vec<BumpResult>, ReplyError> {
    const WHAT: &str = "bump";
    let elements = array(value, WHAT)?;
    if elements.len() != sent {
        return Err(ReplyError::Short {
            what: "bumps",
            sent,
            got: elements.len(),
        });
    }
    elements
        .iter()
        .map(|element| match element {
            Value::Int(0) => Ok(BumpResult { version: None }),
            Value::Int(other) => Err(malformed(WHAT, format!("{other}, expected a version or 0"))),
            other => Ok(BumpResult {
                version: Some(version_number(&text(other, WHAT)?, WHAT)?),
            }),
        })
        .collect()
}

/// One `epoch.lua` reply: `{status, epoch, own watermark, shared watermark}`.
pub(crate) fn epoch(value: Value) -> Result<EpochReply, ReplyError> {
    const WHAT: &str = "epoch";
    let [status, epoch, own, shared] = fixed::<4>(value, WHAT)?;
    let status_text = text(&status, WHAT)?;
    let status =
        EpochStatus::parse(&status_text).ok_or_else(|| malformed(WHAT, format!("unknown status {status_text:?}")))?;
    let epoch = text(&epoch, WHAT)?;
    version_number(&epoch, WHAT)?;
    Ok(EpochReply {
        status,
        epoch,
        own: integer(&own, WHAT)?,
        shared: integer(&shared, WHAT)?,
    })
}

/// `WAIT`'s reply: the number of replicas that acknowledged.
pub(crate) fn wait(value: Value) -> Result<i64, ReplyError> {
    integer(&value, "WAIT")
}

/// `HGET <record> v`: a missing record or field is version 0, as readers
/// take it.
pub(crate) fn version(value: Value) -> Result<u64, ReplyError> {
    match value {
        Value::Nil => Ok(0),
        other => version_number(&text(&other, "HGET v")?, "HGET v"),
    }
}

/// A version's text (readers/spec.md, "Version text"): decimal digits of an
/// integer from 0 to 2^63-1, no sign, no leading zero, no exponent.
pub(crate) fn version_number(text: &str, what: &'static str) -> Result<u64, ReplyError> {
    let canonical =
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    match text.parse::<u64>() {
        Ok(n) if canonical && n <= i64::MAX as u64 => Ok(n),
        _ => Err(malformed(
            what,
            format!("version {text:?} is not a decimal integer below 2^63"),
        )),
    }
}

fn malformed(what: &'static str, problem: String) -> ReplyError {
    ReplyError::Malformed { what, problem }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) | Value::SimpleString(_) | Value::VerbatimString { .. } => "a string",
        Value::Array(_) | Value::Set(_) => "an array",
        Value::ServerError(_) => "an error",
        _ => "another type",
    }
}

fn array(value: Value, what: &'static str) -> Result<Vec<Value>, ReplyError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(malformed(what, format!("{}, expected an array", kind(&other)))),
    }
}

fn fixed<const N: usize>(value: Value, what: &'static str) -> Result<[Value; N], ReplyError> {
    let items = array(value, what)?;
    let got = items.len();
    <[Value; N]>::try_from(items).map_err(|_| malformed(what, format!("{got} elements, expected {N}")))
}

fn integer(value: &Value, what: &'static str) -> Result<i64, ReplyError> {
    match value {
        Value::Int(n) => Ok(*n),
        other => Err(malformed(what, format!("{}, expected an integer", kind(other)))),
    }
}

fn text(value: &Value, what: &'static str) -> Result<String, ReplyError> {
    let bytes = match value {
        Value::BulkString(bytes) => bytes.as_slice(),
        Value::SimpleString(text) => text.as_bytes(),
        Value::VerbatimString { text, .. } => text.as_bytes(),
        other => return Err(malformed(what, format!("{}, expected a string", kind(other)))),
    };
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed(what, "a string that is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::request::ScriptCall;

    fn s(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn applied(version: &str) -> Value {
        s(version)
    }

    const UNCHANGED: Value = Value::Int(0);

    fn epoch_value(status: &str, epoch: &str) -> Value {
        Value::Array(vec![s(status), s(epoch), Value::Int(3), Value::Int(9)])
    }

    #[test]
    fn bump_replies_decode_to_results() {
        let value = Value::Array(vec![applied("1754312399000001"), UNCHANGED]);
        assert_eq!(
            bump_call(value, 2),
            Ok(vec![
                BumpResult {
                    version: Some(1_754_312_399_000_001)
                },
                BumpResult { version: None },
            ])
        );
    }

    #[test]
    fn a_malformed_or_short_bump_reply_is_an_error_never_a_default() {
        let malformed_version = |text: &str| bump_call(Value::Array(vec![applied(text)]), 1);
        for text in ["", "1.7e+15", "-1", "0012", "abc", "9223372036854775808", " 1"] {
            assert!(
                matches!(malformed_version(text), Err(ReplyError::Malformed { .. })),
                "{text:?}"
            );
        }
        assert_eq!(
            malformed_version("9223372036854775807").unwrap()[0].version,
            Some(i64::MAX as u64)
        );
        assert_eq!(
            bump_call(Value::Array(vec![applied("5")]), 2),
            Err(ReplyError::Short {
                what: "bumps",
                sent: 2,
                got: 1
            })
        );
        for flag in [1, -1, 2] {
            assert!(
                matches!(
                    bump_call(Value::Array(vec![Value::Int(flag)]), 1),
                    Err(ReplyError::Malformed { .. })
                ),
                "{flag}"
            );
        }
        assert!(matches!(bump_call(Value::Int(1), 1), Err(ReplyError::Malformed { .. })));
        assert!(matches!(
            bump_call(Value::Array(vec![Value::Nil]), 1),
            Err(ReplyError::Malformed { .. })
        ));
        // The former shape, a {applied, version} pair per key, is refused.
        let pair = Value::Array(vec![Value::Array(vec![Value::Int(1), s("5")])]);
        assert!(matches!(bump_call(pair, 1), Err(ReplyError::Malformed { .. })));
    }

    #[test]
    fn epoch_replies_decode_and_refuse_unknown_shapes() {
        let reply = epoch(epoch_value("rolled_back", "1754312345678901")).unwrap();
        assert_eq!(reply.status, EpochStatus::RolledBack);
        assert_eq!(reply.epoch, "1754312345678901");
        assert_eq!((reply.own, reply.shared), (3, 9));
        assert_eq!(epoch(epoch_value("adopted", "7")).unwrap().status, EpochStatus::Adopted);
        assert!(matches!(
            epoch(epoch_value("fine", "7")),
            Err(ReplyError::Malformed { .. })
        ));
        assert!(matches!(
            epoch(epoch_value("ok", "1e16")),
            Err(ReplyError::Malformed { .. })
        ));
        let short = Value::Array(vec![s("ok"), s("7"), Value::Int(1)]);
        assert!(matches!(epoch(short), Err(ReplyError::Malformed { .. })));
        let text_watermark = Value::Array(vec![s("ok"), s("7"), s("1"), Value::Int(1)]);
        assert!(matches!(epoch(text_watermark), Err(ReplyError::Malformed { .. })));
    }

    #[test]
    fn a_pipeline_reply_is_split_as_it_was_sent() {
        let call = |n: usize| ScriptCall {
            keys: (0..n).map(|i| format!("ver:k{i}")).collect(),
            args: Vec::new(),
        };
        let request = BumpRequest {
            indices: vec![4, 5, 6],
            calls: vec![call(2), call(1)],
        };
        let extras = Extras {
            check: true,
            wait: true,
        };
        let values = vec![
            epoch_value("ok", "42"),
            Value::Array(vec![applied("10"), UNCHANGED]),
            Value::Array(vec![applied("12")]),
            Value::Int(1),
        ];
        let reply = pipeline(values.clone(), &request, extras).unwrap();
        assert_eq!(reply.check.unwrap().epoch, "42");
        assert_eq!(
            reply.results.iter().map(|r| r.version).collect::<Vec<_>>(),
            [Some(10), None, Some(12)]
        );
        assert_eq!(reply.replicas, Some(1));
        // A reply missing (WAIT's, here) is an error, not an absent count.
        let mut fewer = values.clone();
        fewer.pop();
        assert_eq!(
            pipeline(fewer, &request, extras),
            Err(ReplyError::Short {
                what: "pipelined commands",
                sent: 4,
                got: 3
            })
        );
        // A call that answered for fewer keys than it was sent.
        let mut short_call = values;
        short_call[2] = Value::Array(Vec::new());
        assert!(matches!(
            pipeline(short_call, &request, extras),
            Err(ReplyError::Short { what: "bumps", .. })
        ));
        let plain = vec![
            Value::Array(vec![applied("10"), UNCHANGED]),
            Value::Array(vec![applied("12")]),
        ];
        let reply = pipeline(plain, &request, Extras::default()).unwrap();
        assert_eq!((reply.check, reply.replicas), (None, None));
    }

    #[test]
    fn a_version_read_is_zero_only_when_missing() {
        assert_eq!(version(Value::Nil), Ok(0));
        assert_eq!(version(s("17")), Ok(17));
        assert!(matches!(version(s("seventeen")), Err(ReplyError::Malformed { .. })));
        assert!(matches!(wait(s("1")), Err(ReplyError::Malformed { .. })));
    }
}
