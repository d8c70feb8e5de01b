//! SASL PLAIN (RFC 4616): one message, `[authzid] NUL authcid NUL passwd`.
//!
//! Only users whose password is in the users file can use it; the message carries the password,
//! so it is never logged and no error repeats it.

use super::Step;
use super::users::Users;

/// Checks one PLAIN message.
pub(super) fn authenticate(users: &Users, message: &[u8]) -> Step {
    let mut parts = message.split(|b| *b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failed("the PLAIN message is not authzid NUL user NUL password".into());
    };
    let Ok(user) = std::str::from_utf8(user) else {
        return Step::Failed("the PLAIN user name is not UTF-8".into());
    };
    if user.is_empty() || password.is_empty() {
        return Step::Failed("the PLAIN user name or password is empty".into());
    }
    // Kafka's rule: one may only act as oneself.
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return Step::Failed("the PLAIN authorization identity differs from the user".into());
    }
    match users.check_plain(user, password) {
        Some(known) => Step::Authenticated {
            user: user.to_string(),
            groups: known.groups.clone(),
            final_bytes: Vec::new(),
            session_lifetime_ms: 0,
        },
        None => Step::Failed("invalid user name or password with SASL mechanism PLAIN".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        Users::from_yaml("users:\n- {name: alice, password: wonderland, groups: [g]}\n").unwrap()
    }

    #[test]
    fn the_right_password_authenticates_with_the_users_groups() {
        match authenticate(&users(), b"\0alice\0wonderland") {
            Step::Authenticated {
                user,
                groups,
                final_bytes,
                ..
            } => {
                assert_eq!((user.as_str(), groups), ("alice", vec!["g".to_string()]));
                assert!(final_bytes.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            authenticate(&users(), b"alice\0alice\0wonderland"),
            Step::Authenticated { .. }
        ));
    }

    #[test]
    fn a_bad_password_or_message_fails_without_echoing_the_password() {
        for message in [
            &b"\0alice\0looking-glass"[..],
            b"\0mallory\0wonderland",
            b"bob\0alice\0wonderland",
            b"\0alice\0",
            b"\0\0wonderland",
            b"alice wonderland",
            b"\0alice\0wonderland\0extra",
        ] {
            match authenticate(&users(), message) {
                Step::Failed(reason) => {
                    assert!(!reason.contains("wonderland"), "{reason}");
                    assert!(!reason.contains("looking-glass"), "{reason}");
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(message)),
            }
        }
    }
}
