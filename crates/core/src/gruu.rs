//! GRUU (RFC 5627): the public and temporary GRUUs a REGISTER answer hands to a phone
//! instance that asks (`Supported: gruu` and `+sip.instance`), and where a request to one
//! goes: that instance's contacts only, never the user's other phones, the dial plan or
//! forwarding. JsSIP and SIP.js put their GRUU in the Contact of every dialog, so requests
//! inside a browser's calls arrive here addressed to it.
//!
//! A public GRUU names the user (`sip:alice@example.org;gr=urn:uuid:...`). A temporary one
//! does not (`sip:tgruu.<hash>@example.org;gr`): the hash is keyed, and the location table
//! remembers which instance it stands for while that instance is registered.

use crate::keys::Purpose;
use crate::route::Hop;
use crate::Core;
use sip::uri::Uri;
use std::time::Instant;

/// The user part of our temporary GRUUs starts with this.
const TEMP_PREFIX: &str = "tgruu.";

/// Where a GRUU of ours leads.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GruuTarget {
    /// A user's phone instance (`<urn:...>`).
    Instance {
        /// The user (qualified for the other served domains).
        aor: String,
        /// The instance id, with its angle brackets.
        instance: String,
    },
    /// No GRUU we handed out (or its registration ended).
    Unknown,
}

impl Core {
    /// The Contact parameters a REGISTER answer gives a contact of instance `instance`
    /// registered with `call_id` (RFC 5627 §5.2); remembers its temporary GRUU.
    pub(crate) fn gruu_params(
        &mut self,
        aor: &str,
        instance: &str,
        reg_id: Option<u32>,
        call_id: &str,
    ) -> String {
        let aor_uri = self.aor_uri(aor);
        let domain = aor_uri.rsplit_once('@').map_or("", |(_, d)| d);
        let urn = instance.trim_start_matches('<').trim_end_matches('>');
        let mut h = self.origin.keys.hasher(Purpose::TempGruu);
        h.write(aor);
        h.write(instance);
        h.write(call_id);
        let mut token = String::with_capacity(16);
        crate::push_hex(&mut token, h.finish(), 16);
        self.location
            .remember_temp_gruu(&token, aor, instance, call_id);
        let reg = reg_id.map(|r| format!(";reg-id={r}")).unwrap_or_default();
        format!(
            ";+sip.instance=\"{instance}\"{reg};pub-gruu=\"{aor_uri};gr={urn}\";\
             temp-gruu=\"sip:{TEMP_PREFIX}{token}@{domain};gr\""
        )
    }

    /// Where `uri` leads when it is one of our GRUUs (it has a `gr` parameter); None for
    /// any other URI.
    pub(crate) fn gruu_target(&self, uri: &Uri<'_>) -> Option<GruuTarget> {
        let gr = uri.param("gr")?;
        let user = uri.user_unescaped()?;
        let found = match gr {
            Some(urn) => {
                let domain = self.served_domain(&uri.host).unwrap_or(&self.cfg.domain);
                let key = self.qualify(&user, domain);
                let name = if domain == self.cfg.domain {
                    self.auth.users().find(&key)
                } else {
                    self.auth.users().by_name(&key)
                };
                name.map(|u| (u.name.clone(), format!("<{urn}>")))
            }
            None => user
                .strip_prefix(TEMP_PREFIX)
                .and_then(|token| self.location.temp_gruu(token))
                .map(|(aor, instance)| (aor.to_string(), instance.to_string())),
        };
        Some(match found {
            Some((aor, instance)) => GruuTarget::Instance { aor, instance },
            None => GruuTarget::Unknown,
        })
    }

    /// The hops of one instance's live contacts.
    pub(crate) fn instance_hops(&self, aor: &str, instance: &str, now: Instant) -> Vec<Hop> {
        self.location
            .lookup(aor, now)
            .into_iter()
            .filter(|b| b.is_instance(instance))
            .filter_map(|b| self.binding_hop(b))
            .collect()
    }
}
