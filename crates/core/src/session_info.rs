//! What a logged-in browser page is told about its session, in answer to an authenticated
//! OPTIONS to the domain that accepts `application/vnd.hedgewitch.session+json`: the user's
//! name and extension, the domain's directory (names and extensions, never to anyone who
//! has not logged in), and TURN credentials when the server relays for browsers. The page
//! thus holds no secret but the user's own password, and only until it has logged in.

use crate::handles::ServerTxId;
use crate::Core;
use sip::header::HeaderName;
use sip::message::{Message, Method};
use std::time::Instant;

/// The media type a page asks for.
pub(crate) const MEDIA_TYPE: &str = "application/vnd.hedgewitch.session+json";
/// Directory entries sent at most (the answer must fit in a SIP message).
const DIRECTORY_MAX: usize = 500;

/// Whether `msg` is a page asking for its session information.
pub(crate) fn is_asked(msg: &Message) -> bool {
    msg.method() == Some(Method::Options)
        && msg.values(HeaderName::Accept).any(|v| {
            v.split(',').any(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case(MEDIA_TYPE))
            })
        })
}

impl Core {
    /// Answers the authenticated `user`'s request for session information.
    pub(crate) fn answer_session_info(&mut self, now: Instant, key: ServerTxId, user: &str) {
        let body = self.session_info(user, now).to_string();
        self.respond(
            now,
            key,
            200,
            "OK",
            &[],
            Some((MEDIA_TYPE, body.as_bytes())),
        );
    }

    fn session_info(&self, user: &str, now: Instant) -> serde_json::Value {
        let domain_of = |name: &str| name.split_once('@').map(|(_, d)| d.to_string());
        let mine = domain_of(user);
        let me = self.auth.users().by_name(user);
        let mut directory: Vec<(&str, Option<&str>)> = self
            .auth
            .users()
            .iter()
            .filter(|u| domain_of(&u.name) == mine)
            .map(|u| (u.name.as_str(), u.extension.as_deref()))
            .collect();
        directory.sort_by(|a, b| (a.1.is_none(), a.1, a.0).cmp(&(b.1.is_none(), b.1, b.0)));
        directory.truncate(DIRECTORY_MAX);
        serde_json::json!({
            "user": user,
            "uri": self.aor_uri(user),
            "extension": me.and_then(|u| u.extension.as_deref()),
            "directory": directory
                .into_iter()
                .map(|(name, extension)| serde_json::json!({ "name": name, "extension": extension }))
                .collect::<Vec<_>>(),
            "turn": self
                .calls
                .turn
                .enabled()
                .then(|| crate::turn::mint(self.calls.turn.settings(), user, self.unix(now)))
                .flatten(),
        })
    }
}
