//! The documents of presence: PIDF (RFC 3863) with the RPID activities phones use (RFC 4480:
//! away, busy, on-the-phone), read from a device's PUBLISH and written for watchers; and the
//! dialog-info documents (RFC 4235) busy lamps read.

/// What a user is doing, as far as presence tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Activity {
    /// Away from the phone.
    Away,
    /// Busy (or do-not-disturb).
    Busy,
    /// In a call.
    OnThePhone,
}

impl Activity {
    fn element(self) -> &'static str {
        match self {
            Activity::Away => "away",
            Activity::Busy => "busy",
            Activity::OnThePhone => "on-the-phone",
        }
    }

    fn note(self) -> &'static str {
        match self {
            Activity::Away => "Away",
            Activity::Busy => "Busy",
            Activity::OnThePhone => "On the phone",
        }
    }
}

/// One state of a user: open (reachable) or closed, what they are doing, a note.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// `open` in the basic status.
    pub open: bool,
    /// The RPID activity, if any.
    pub activity: Option<Activity>,
    /// A free-text note.
    pub note: Option<String>,
}

/// Reads what a device published: `basic` open or closed, an RPID activity, a note. None
/// when it is not a PIDF document.
pub fn parse(body: &[u8]) -> Option<Status> {
    let text = std::str::from_utf8(body).ok()?;
    let doc = roxmltree::Document::parse(text).ok()?;
    let root = doc.root_element();
    if root.tag_name().name() != "presence" {
        return None;
    }
    let mut st = Status::default();
    for n in root.descendants().filter(|n| n.is_element()) {
        match n.tag_name().name() {
            "basic" => {
                st.open |= n
                    .text()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("open"))
            }
            "away" | "vacation" | "appointment" => {
                st.activity = st.activity.max(Some(Activity::Away))
            }
            "busy" | "meeting" | "in-transit" => {
                st.activity = st.activity.max(Some(Activity::Busy))
            }
            "on-the-phone" => st.activity = Some(Activity::OnThePhone),
            "note" if st.note.is_none() => {
                st.note = n.text().map(|t| t.trim().chars().take(200).collect())
            }
            _ => {}
        }
    }
    Some(st)
}

/// `&`, `<`, `>`, `"` escaped for XML text and attributes.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => {}
            c => out.push(c),
        }
    }
    out
}

/// The PIDF document of `entity` (`sip:alice@example.org`) in state `st`: a tuple with the
/// basic status and the note, and (with an activity) a person with its RPID activity and
/// the note again, as phones write it (PJSIP reads the person's note with the activity).
pub fn compose(entity: &str, st: &Status) -> String {
    let basic = if st.open { "open" } else { "closed" };
    let note = st
        .note
        .clone()
        .or_else(|| st.activity.map(|a| a.note().to_string()))
        .map(|n| escape(&n));
    let mut doc = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
         xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" \
         xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" entity=\"{}\">\n\
         <tuple id=\"hw\"><status><basic>{basic}</basic></status>",
        escape(entity)
    );
    if let Some(n) = &note {
        doc.push_str(&format!("<note>{n}</note>"));
    }
    doc.push_str("</tuple>\n");
    if let Some(a) = st.activity {
        doc.push_str(&format!(
            "<dm:person id=\"p\"><rpid:activities><rpid:{}/></rpid:activities><dm:note>{}</dm:note></dm:person>\n",
            a.element(),
            note.unwrap_or_default()
        ));
    }
    doc.push_str("</presence>\n");
    doc
}

/// Where a dialog is, as a busy lamp shows it (RFC 4235 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogState {
    /// Ringing.
    Early,
    /// Answered.
    Confirmed,
    /// Over.
    Terminated,
}

impl DialogState {
    fn as_str(self) -> &'static str {
        match self {
            DialogState::Early => "early",
            DialogState::Confirmed => "confirmed",
            DialogState::Terminated => "terminated",
        }
    }
}

/// One call of a user, for the dialog package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialogView {
    /// The call's Call-ID.
    pub call_id: String,
    /// The user called (recipient) or called out (initiator).
    pub initiator: bool,
    /// Where it is.
    pub state: DialogState,
}

/// The dialog-info document (full state) of `entity` at `version`.
pub fn dialog_info(entity: &str, version: u32, dialogs: &[DialogView]) -> String {
    let mut doc = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <dialog-info xmlns=\"urn:ietf:params:xml:ns:dialog-info\" version=\"{version}\" \
         state=\"full\" entity=\"{}\">\n",
        escape(entity)
    );
    for (i, d) in dialogs.iter().enumerate() {
        doc.push_str(&format!(
            "<dialog id=\"d{i}\" call-id=\"{}\" direction=\"{}\"><state>{}</state></dialog>\n",
            escape(&d.call_id),
            if d.initiator {
                "initiator"
            } else {
                "recipient"
            },
            d.state.as_str()
        ));
    }
    doc.push_str("</dialog-info>\n");
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_phones_publish() {
        let away = br#"<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf"
            xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
            xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:bob@example.org">
            <tuple id="a"><status><basic>open</basic></status></tuple>
            <dm:person id="p"><rpid:activities><rpid:away/></rpid:activities></dm:person>
            <note>Gone fishing</note></presence>"#;
        let st = parse(away).unwrap();
        assert!(st.open);
        assert_eq!(st.activity, Some(Activity::Away));
        assert_eq!(st.note.as_deref(), Some("Gone fishing"));
        assert_eq!(parse(b"<notpresence/>"), None);
        assert_eq!(parse(b"garbage <"), None);
    }

    #[test]
    fn writes_documents_that_read_back() {
        let st = Status {
            open: true,
            activity: Some(Activity::OnThePhone),
            note: None,
        };
        let doc = compose("sip:a&b@example.org", &st);
        assert!(doc.contains("entity=\"sip:a&amp;b@example.org\""));
        let back = parse(doc.as_bytes()).unwrap();
        assert_eq!(back.activity, Some(Activity::OnThePhone));
        assert_eq!(back.note.as_deref(), Some("On the phone"));
        let info = dialog_info(
            "sip:alice@example.org",
            3,
            &[DialogView {
                call_id: "c1".into(),
                initiator: false,
                state: DialogState::Early,
            }],
        );
        assert!(roxmltree::Document::parse(&info).is_ok());
        assert!(info.contains("version=\"3\"") && info.contains("<state>early</state>"));
    }
}
