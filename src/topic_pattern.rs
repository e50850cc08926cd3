//! Topic subscription patterns in the dialect librdkafka really uses.
//!
//! librdkafka compiles a regex subscription (a topic name starting with `^`)
//! with the C library's POSIX `regcomp(REG_EXTENDED | REG_NOSUB)` wherever the
//! platform has one (its build checks for `regcomp`; every Linux libc does),
//! and refuses the whole subscription with `Invalid argument` when that fails.
//! Validating with Rust's `regex` crate accepted patterns (`(?:...)`, `\d`,
//! lazy quantifiers) that librdkafka then refused at subscribe. So the config
//! is validated, and `check` matches topic names, with the very same C
//! functions, linked into this process: what `check` accepts, `run` can
//! subscribe to, and the topics `check` lists are the ones librdkafka picks.

use std::ffi::CString;

/// A compiled POSIX extended regular expression.
pub(crate) struct TopicPattern {
    compiled: Box<libc::regex_t>,
    /// The full pattern handed to librdkafka: `^(...)$`.
    anchored: String,
}

// SAFETY: a compiled regex_t is only read by regexec, which POSIX requires to
// be thread-safe; it is freed once, in Drop.
unsafe impl Send for TopicPattern {}
unsafe impl Sync for TopicPattern {}

impl std::fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TopicPattern").field(&self.anchored).finish()
    }
}

impl Clone for TopicPattern {
    fn clone(&self) -> Self {
        // The pattern compiled once already; compiling it again cannot fail.
        #[allow(clippy::expect_used)]
        TopicPattern::compile(self.anchored.clone()).expect("a pattern that compiled once compiles again")
    }
}

impl PartialEq for TopicPattern {
    fn eq(&self, other: &Self) -> bool {
        self.anchored == other.anchored
    }
}

impl TopicPattern {
    /// Anchors the user's pattern to whole topic names (an unanchored pattern
    /// silently picks up topics nobody meant to consume) and compiles it.
    /// A leading `^` and a trailing unescaped `$` are accepted and implied.
    pub(crate) fn new(user_pattern: &str) -> Result<TopicPattern, String> {
        let inner = user_pattern.strip_prefix('^').unwrap_or(user_pattern);
        let inner = match inner.strip_suffix('$') {
            Some(rest) if !rest.ends_with('\\') => rest,
            _ => inner,
        };
        if inner.is_empty() {
            return Err("the pattern is empty".into());
        }
        // A group, not `(?:...)`: POSIX extended syntax has no
        // non-capturing groups, and REG_NOSUB makes the group free.
        TopicPattern::compile(format!("^({inner})$"))
    }

    fn compile(anchored: String) -> Result<TopicPattern, String> {
        let text = CString::new(anchored.as_bytes()).map_err(|_| "the pattern contains a NUL byte".to_owned())?;
        // SAFETY: regex_t is plain data that regcomp initialises; a zeroed
        // value is a valid argument to it.
        let mut compiled: Box<libc::regex_t> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: both pointers are valid for the call; on success the
        // compiled value is freed in Drop, on failure regcomp owns nothing.
        let rc = unsafe { libc::regcomp(&mut *compiled, text.as_ptr(), libc::REG_EXTENDED | libc::REG_NOSUB) };
        if rc != 0 {
            let mut message = [0u8; 256];
            // SAFETY: regerror writes at most `message.len()` bytes, NUL-terminated.
            unsafe { libc::regerror(rc, &*compiled, message.as_mut_ptr().cast(), message.len()) };
            let end = message.iter().position(|&b| b == 0).unwrap_or(message.len());
            let reason = String::from_utf8_lossy(message.get(..end).unwrap_or_default()).into_owned();
            return Err(format!(
                "librdkafka's regex engine (POSIX extended, as in `grep -E`) refuses {anchored:?}: {reason}"
            ));
        }
        Ok(TopicPattern { compiled, anchored })
    }

    /// The pattern as librdkafka's `subscribe` takes it.
    pub(crate) fn anchored(&self) -> &str {
        &self.anchored
    }

    /// Whether librdkafka's engine matches the whole topic name.
    pub(crate) fn is_match(&self, topic: &str) -> bool {
        let Ok(text) = CString::new(topic) else { return false };
        // SAFETY: the compiled pattern is valid until Drop; REG_NOSUB means
        // no match array is read or written.
        unsafe { libc::regexec(&*self.compiled, text.as_ptr(), 0, std::ptr::null_mut(), 0) == 0 }
    }
}

impl Drop for TopicPattern {
    fn drop(&mut self) {
        // SAFETY: compiled successfully in `compile`, freed exactly once here.
        unsafe { libc::regfree(&mut *self.compiled) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_names_only() {
        let p = TopicPattern::new(r"shop\.public\.(products|reviews)").unwrap();
        assert_eq!(p.anchored(), r"^(shop\.public\.(products|reviews))$");
        assert!(p.is_match("shop.public.products"));
        assert!(p.is_match("shop.public.reviews"));
        assert!(!p.is_match("shop.public.products_archive"));
        assert!(!p.is_match("xshop.public.products"));
        assert!(!p.is_match("shopXpublic.products"));
    }

    #[test]
    fn explicit_anchors_are_the_same_pattern() {
        assert_eq!(
            TopicPattern::new(r"^shop\..*$").unwrap(),
            TopicPattern::new(r"shop\..*").unwrap()
        );
    }

    #[test]
    fn perl_only_syntax_is_refused_as_librdkafka_would() {
        for pattern in [r"shop\.(?:a|b)", r"shop\.(a", "shop[", "*shop"] {
            let error = TopicPattern::new(pattern).unwrap_err();
            assert!(error.contains("POSIX extended"), "{pattern}: {error}");
        }
    }

    #[test]
    fn alternation_binds_inside_the_anchors() {
        // Without the group, `^a|b$` would match "a-anything" and "anything-b".
        let p = TopicPattern::new("a|b").unwrap();
        assert!(!p.is_match("a-anything"));
        assert!(!p.is_match("anything-b"));
        assert!(p.is_match("b"));
    }
}
