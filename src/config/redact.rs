//! Secrets out of URLs, for config errors, other errors and logs: every
//! URL-valued setting (Redis, Kafka Connect, the schema registry, the
//! dead-letter and lookup databases) may carry a password.

/// Hides the password of a URL for messages and logs, whatever form the URL
/// was written in: with a scheme or without one (`admin:pw@host:6379`), a
/// user and a password or a password alone (`:pw@host`), and a `password`
/// query parameter (`postgres://h/db?password=pw`). The user name stays, so
/// that an operator can tell which account was meant.
pub(crate) fn redact_url(url: &str) -> String {
    redact_userinfo(&redact_query(url))
}

/// `user:password@` becomes `user:***@`.
fn redact_userinfo(url: &str) -> String {
    let (head, rest) = url.split_at(scheme_len(url));
    // The last `@`: a password written unescaped may itself hold `@`, `/`,
    // `?` or `#`, so nothing before the last `@` is taken for the host.
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let user = rest[..at].split(':').next().unwrap_or("");
    // A user name holds no path or query character: this `@` belongs to a
    // later part of the URL, and what stands before it is hidden whole.
    let user = if user.contains(['/', '?', '#']) { "" } else { user };
    format!("{head}{user}:***{}", &rest[at..])
}

/// The value of every query parameter named `*password` becomes `***`
/// (PostgreSQL takes `password` and `sslpassword` there).
fn redact_query(url: &str) -> String {
    let Some(question) = url.find('?') else {
        return url.to_owned();
    };
    let (base, query) = url.split_at(question + 1);
    let (query, fragment) = query.split_at(query.find('#').unwrap_or(query.len()));
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if name.to_ascii_lowercase().ends_with("password") => format!("{name}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}{}{fragment}", pairs.join("&"))
}

/// The length of a leading `scheme://`, 0 when the text has none (a `://`
/// further on, inside a password or a query, starts no scheme).
fn scheme_len(url: &str) -> usize {
    let Some(end) = url.find("://") else { return 0 };
    let mut scheme = url[..end].chars();
    let is_scheme = scheme.next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if is_scheme {
        end + "://".len()
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_password() {
        assert_eq!(redact_url("redis://app:hunter2@h:6379/0"), "redis://app:***@h:6379/0");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
    }

    /// The password never survives, whatever form the URL was written in.
    #[test]
    fn every_form_of_url_loses_its_password() {
        let cases = [
            ("admin:S3cret@host:6379", "admin:***@host:6379"),
            (":S3cret@host:6379", ":***@host:6379"),
            ("redis://:S3cret@host:6379", "redis://:***@host:6379"),
            ("rediss://admin:S3cret@host:6379/2", "rediss://admin:***@host:6379/2"),
            ("http://u:S3c@ret@connect:8083", "http://u:***@connect:8083"),
            ("http://u:S3c/r?e#t@connect:8083", "http://u:***@connect:8083"),
            ("u:S3cret@k1:9092,u:S3cret@k2:9092", "u:***@k2:9092"),
            ("u:a://S3cret@host", "u:***@host"),
            (
                "postgres://h/db?user=u&password=S3cret",
                "postgres://h/db?user=u&password=***",
            ),
            (
                "postgres://h/db?sslpassword=S3cret#x",
                "postgres://h/db?sslpassword=***#x",
            ),
            ("postgres://h/db?options=S3cret@x", "postgres://:***@x"),
            ("mysql://app:S3cret@db:3306/shop", "mysql://app:***@db:3306/shop"),
        ];
        for (url, redacted) in cases {
            assert_eq!(redact_url(url), redacted, "{url}");
            assert!(!redact_url(url).contains("S3c"), "{url}");
        }
    }

    #[test]
    fn urls_without_a_password_are_unchanged() {
        for url in [
            "redis://h:6379",
            "h:6379",
            "http://connect:8083/",
            "postgres://h/db?sslmode=require",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }
}
