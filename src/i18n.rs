//! The one translation table of every message a person sees (block pages, proxy
//! error pages, later the admin app): each message is written in French (fr-CA)
//! first and English second, side by side, so a missing translation shows in review.
//!
//! It owns language negotiation (`Accept-Language`) and the wording; it must not
//! know where a message is shown nor format pages (that is the caller's).

/// A language vigie speaks. French first: vigie serves Quebec schools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    Fr,
    En,
}

impl Lang {
    /// The short code of `?lang=` links and forms (`fr`, `en`).
    pub fn code(self) -> &'static str {
        match self {
            Lang::Fr => "fr",
            Lang::En => "en",
        }
    }

    /// The BCP 47 tag used in `lang=` and `Content-Language`.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::Fr => "fr-CA",
            Lang::En => "en",
        }
    }

    /// The best language for an `Accept-Language` header: the highest-weighted of
    /// French and English, French when nothing matches (RFC 9110 §12.5.4 weights;
    /// ties keep the client's order).
    pub fn negotiate(accept_language: Option<&str>) -> Lang {
        let Some(header) = accept_language else {
            return Lang::Fr;
        };
        let mut best: Option<(f32, Lang)> = None;
        for item in header.split(',').take(32) {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|v| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let primary = tag.split('-').next().unwrap_or("");
            let lang = match primary {
                "fr" => Lang::Fr,
                "en" => Lang::En,
                _ => continue,
            };
            if q > 0.0 && best.is_none_or(|(bq, _)| q > bq) {
                best = Some((q, lang));
            }
        }
        best.map(|(_, l)| l).unwrap_or(Lang::Fr)
    }
}

/// Every message of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Msg {
    BlockedTitle,
    BlockedLead,
    BlockedTunnelLead,
    ErrorTitle,
    FieldAddress,
    FieldCategory,
    FieldProfile,
    FieldUser,
    FieldRule,
    FieldReference,
    FieldTime,
    FieldReason,
    ReviewLink,
    ReviewHint,
    NoCategory,
    Anonymous,
    ReasonBareIp,
    ReasonDenyOverride,
    ReasonCircumvention,
    ReasonCategory,
    ReasonProtocol,
    ReasonUnknownProfile,
    NotClient,
    NotServed,
    Internal,
    PortNotAllowed,
    AuthRequired,
    AuthFailed,
    AuthThrottled,
    AuthUnavailable,
    PortalRequired,
    BadRequest,
    UnsupportedScheme,
    NameNotFound,
    OriginUnreachable,
    OriginTimeout,
    OriginError,
    Busy,
    Loop,
    NotBlockedNow,
    RuleCategory,
    RuleScheduled,
    RuleScheduledWhen,
    RuleDeny,
    RuleBareIp,
    RuleCircumvention,
    RuleProtocol,
    RuleUnknownProfile,
}

/// The text of `msg` in `lang`.
pub fn t(lang: Lang, msg: Msg) -> &'static str {
    let (fr, en) = entry(msg);
    match lang {
        Lang::Fr => fr,
        Lang::En => en,
    }
}

/// `(fr-CA, en)` of every message.
fn entry(msg: Msg) -> (&'static str, &'static str) {
    use Msg::*;
    match msg {
        BlockedTitle => ("Accès bloqué", "Access blocked"),
        BlockedLead => (
            "Le filtre de l'école a bloqué cette page.",
            "The school's filter blocked this page.",
        ),
        BlockedTunnelLead => (
            "Le filtre de l'école a refusé cette connexion sécurisée.",
            "The school's filter refused this secure connection.",
        ),
        ErrorTitle => ("Erreur du mandataire", "Proxy error"),
        FieldAddress => ("Adresse", "Address"),
        FieldCategory => ("Catégorie", "Category"),
        FieldProfile => ("Profil", "Profile"),
        FieldUser => ("Utilisateur", "User"),
        FieldRule => ("Règle", "Rule"),
        FieldReference => ("Référence", "Reference"),
        FieldTime => ("Heure", "Time"),
        FieldReason => ("Motif", "Reason"),
        ReviewLink => ("Demander une révision", "Request a review"),
        ReviewHint => (
            "Si ce blocage vous semble une erreur, demandez une révision en donnant la référence ci-dessus.",
            "If you think this is a mistake, request a review and give the reference above.",
        ),
        NoCategory => ("aucune", "none"),
        Anonymous => ("non identifié", "not identified"),
        ReasonBareIp => (
            "Accès direct par adresse IP, non permis pour ce profil.",
            "Direct access by IP address, not allowed for this profile.",
        ),
        ReasonDenyOverride => ("Site interdit par l'école.", "Site denied by the school."),
        ReasonCircumvention => (
            "Tentative de contournement du filtre.",
            "Attempt to get around the filter.",
        ),
        ReasonCategory => (
            "Catégorie bloquée pour ce profil.",
            "Category blocked for this profile.",
        ),
        ReasonProtocol => (
            "Protocole refusé (pair-à-pair, VPN ou tunnel).",
            "Protocol refused (peer-to-peer, VPN or tunnel).",
        ),
        ReasonUnknownProfile => (
            "Votre profil n'existe plus dans la configuration : accès refusé par précaution.",
            "Your profile is no longer in the configuration: refused as a precaution.",
        ),
        NotClient => (
            "Votre réseau n'est pas autorisé à utiliser ce mandataire.",
            "Your network may not use this proxy.",
        ),
        NotServed => (
            "Votre réseau n'est pas desservi par le filtre de l'école.",
            "Your network is not served by the school's filter.",
        ),
        Internal => (
            "Cette adresse est interne : le mandataire ne s'y connecte pas.",
            "This address is internal: the proxy does not connect to it.",
        ),
        PortNotAllowed => (
            "Ce port n'est pas permis pour une connexion sécurisée (CONNECT).",
            "This port is not allowed for a secure connection (CONNECT).",
        ),
        AuthRequired => (
            "Identifiez-vous avec votre code d'accès pour utiliser Internet.",
            "Sign in with your access code to use the Internet.",
        ),
        AuthFailed => (
            "Code d'accès ou mot de passe invalide.",
            "Invalid access code or password.",
        ),
        AuthThrottled => (
            "Trop d'essais infructueux : attendez une minute avant de réessayer.",
            "Too many failed attempts: wait a minute before trying again.",
        ),
        AuthUnavailable => (
            "Le service d'identification ne répond pas : réessayez dans un instant.",
            "The sign-in service is not answering: try again in a moment.",
        ),
        PortalRequired => (
            "Connectez-vous au portail du réseau de l'école avant d'utiliser Internet.",
            "Sign in at the school network's portal before using the Internet.",
        ),
        BadRequest => ("Requête invalide.", "Invalid request."),
        UnsupportedScheme => (
            "Seules les adresses http:// passent par ce mandataire sans CONNECT.",
            "Only http:// addresses go through this proxy without CONNECT.",
        ),
        NameNotFound => (
            "Ce nom de site est introuvable.",
            "This site name cannot be found.",
        ),
        OriginUnreachable => (
            "Le site n'a pas pu être joint.",
            "The site could not be reached.",
        ),
        OriginTimeout => (
            "Le site n'a pas répondu à temps.",
            "The site did not answer in time.",
        ),
        OriginError => (
            "Le site a donné une réponse invalide.",
            "The site gave an invalid answer.",
        ),
        Busy => (
            "Le mandataire est surchargé ; réessayez dans un instant.",
            "The proxy is overloaded; try again in a moment.",
        ),
        NotBlockedNow => (
            "Ce site n'est pas bloqué pour vous en ce moment : votre appareil a gardé une ancienne réponse DNS. Réessayez dans une minute.",
            "This site is not blocked for you now: your device kept an old DNS answer. Try again in a minute.",
        ),
        // The block page's "Rule" row: `{p}` the profile, `{c}` the category, `{n}`
        // the rule's number, `{s}` its schedule, `{e}` the override's entry.
        RuleCategory => (
            "{p} : catégorie « {c} » bloquée",
            "{p}: category “{c}” blocked",
        ),
        RuleScheduled => (
            "{p} : règle {n}, « {c} » bloquée",
            "{p}: rule {n}, “{c}” blocked",
        ),
        RuleScheduledWhen => (
            "{p} : règle {n}, « {c} » bloquée pendant « {s} »",
            "{p}: rule {n}, “{c}” blocked during “{s}”",
        ),
        RuleDeny => (
            "{p} : interdit par l'école ({e})",
            "{p}: denied by the school ({e})",
        ),
        RuleBareIp => (
            "{p} : accès direct par adresse IP interdit",
            "{p}: direct access by IP address not allowed",
        ),
        RuleCircumvention => (
            "{p} : contournement du filtre (DNS chiffré)",
            "{p}: filter circumvention (encrypted DNS)",
        ),
        RuleProtocol => ("{p} : protocole refusé", "{p}: protocol refused"),
        RuleUnknownProfile => (
            "profil inconnu : refusé par précaution",
            "unknown profile: refused as a precaution",
        ),
        Loop => (
            "Cette adresse est celle du filtre lui-même.",
            "This address is the filter's own.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_weights_and_defaults_to_french() {
        assert_eq!(Lang::negotiate(None), Lang::Fr);
        assert_eq!(Lang::negotiate(Some("en-US,en;q=0.9")), Lang::En);
        assert_eq!(Lang::negotiate(Some("fr-CA,fr;q=0.9,en;q=0.8")), Lang::Fr);
        assert_eq!(Lang::negotiate(Some("de-DE, en;q=0.5, fr;q=0.7")), Lang::Fr);
        assert_eq!(Lang::negotiate(Some("de-DE, fr;q=0.3, en;q=0.7")), Lang::En);
        assert_eq!(Lang::negotiate(Some("es")), Lang::Fr);
        assert_eq!(Lang::negotiate(Some("en;q=0")), Lang::Fr);
    }

    #[test]
    fn every_message_has_both_languages() {
        for m in [
            Msg::BlockedTitle,
            Msg::NotClient,
            Msg::NotServed,
            Msg::ReasonProtocol,
            Msg::ReasonUnknownProfile,
            Msg::Loop,
        ] {
            assert!(!t(Lang::Fr, m).is_empty());
            assert!(!t(Lang::En, m).is_empty());
            assert_ne!(t(Lang::Fr, m), t(Lang::En, m));
        }
    }
}
