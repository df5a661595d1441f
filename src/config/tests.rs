use super::*;

const BASE: &str = r#"
[[categories]]
id = "gambling"
fr = "Jeux d'argent"
en = "Gambling"

[[categories]]
id = "social_networks"
fr = "Réseaux sociaux"
en = "Social networks"

[schedules.travail]
days = ["mon-fri"]
times = ["08:00-11:30", "13:00-16:00"]

[profiles.eleves]
block = ["gambling"]

[profiles.invites]
block = ["gambling", "social_networks"]
"#;

fn errors(text: &str) -> Vec<String> {
    match parse(text, "vigie.toml", Path::new("/etc/vigie")) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|d| d.to_string()).collect(),
    }
}

#[test]
fn base_config_is_valid() {
    let c = parse(BASE, "vigie.toml", Path::new("/etc/vigie")).unwrap();
    assert_eq!(c.profiles.len(), 2);
    assert_eq!(c.timezone, chrono_tz::America::Toronto);
    assert_eq!(c.profile_id("invites"), Some(c.default_profile));
    assert_eq!(c.client_networks.len(), DEFAULT_CLIENT_NETWORKS.len());
}

#[test]
fn embedded_default_is_valid() {
    let c = parse(EMBEDDED_DEFAULT, EMBEDDED_NAME, &shipped_lists_dir())
        .unwrap_or_else(|e| panic!("{e}"));
    for p in ["eleves", "personnel", "invites"] {
        assert!(c.profile_id(p).is_some(), "{p}");
    }
    assert_eq!(c.profiles[c.default_profile as usize].name, "invites");
    for cat in [
        "adult",
        "gambling",
        "games",
        "vpn",
        "doh",
        "redirector",
        "social_networks",
        "chat",
        "agressif",
        "dating",
        "warez",
        "p2p",
        "tor",
    ] {
        assert!(c.category_id(cat).is_some(), "{cat}");
    }
}

#[test]
fn unknown_category_with_suggestion() {
    let text = BASE.replace("block = [\"gambling\"]", "block = [\"gamblin\"]");
    assert_eq!(
        errors(&text),
        vec![
            r#"vigie.toml:17:10: unknown category "gamblin" in profile "eleves" — did you mean "gambling"?"#
        ]
    );
}

#[test]
fn every_unknown_key_is_reported() {
    let text =
        format!("{BASE}\n[profiles.personnel]\nblok = [\"gambling\"]\nsafe_serch = \"strict\"\n");
    let errs = errors(&text);
    assert_eq!(
        errs,
        vec![
            r#"vigie.toml:23:1: unknown key "blok" — did you mean "block"?"#,
            r#"vigie.toml:24:1: unknown key "safe_serch" — did you mean "safe_search"?"#,
        ]
    );
}

#[test]
fn unknown_top_level_table_and_key() {
    let text = format!("colour = 3\n{BASE}\n[proxi]\nlisten = \"x\"\n");
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("vigie.toml:1:1: unknown key \"colour\""),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("vigie.toml:23:2: unknown key \"proxi\""),
        "{errs:?}"
    );
}

#[test]
fn many_semantic_errors_at_once() {
    let text = r#"timezone = "America/Toronot"
client_networks = ["10.0.0.0/33"]

[[categories]]
id = "games"
fr = "Jeux"
en = "Games"

[schedules.midi]
days = ["mon-fri"]
times = ["13:00-12:00"]

[profiles.invites]
block = ["game"]

[[networks]]
cidr = "10.1.0.0/16"
profile = "eleve"
"#;
    assert_eq!(
        errors(text),
        vec![
            r#"vigie.toml:1:12: unknown time zone "America/Toronot" — did you mean "America/Toronto"?"#.to_string(),
            r#"vigie.toml:2:20: invalid CIDR "10.0.0.0/33" (expected e.g. 10.1.0.0/16 or fd00::/8)"#.to_string(),
            r#"vigie.toml:11:10: in schedule "midi": time range "13:00-12:00" ends before it starts (a range cannot cross midnight: split it in two)"#.to_string(),
            r#"vigie.toml:14:10: unknown category "game" in profile "invites" — did you mean "games"?"#.to_string(),
            r#"vigie.toml:18:11: unknown profile "eleve" in network"#.to_string(),
        ]
    );
}

#[test]
fn overlapping_opposite_rules_are_refused() {
    let text = format!(
        "{BASE}\n[schedules.midi]\ndays = [\"mon-fri\"]\ntimes = [\"11:00-13:00\"]\n\n[profiles.personnel]\n\n[[profiles.personnel.rules]]\naction = \"block\"\ncategories = [\"social_networks\"]\nschedule = \"travail\"\n\n[[profiles.personnel.rules]]\naction = \"allow\"\ncategories = [\"social_networks\"]\nschedule = \"midi\"\n"
    );
    let errs = errors(&text);
    assert_eq!(
        errs,
        vec![
            r#"vigie.toml:34:10: rules for "social_networks" in profile "personnel" overlap in time with opposite actions (the other rule is at line 29)"#
        ]
    );
    // Lunch that starts when the morning ends does not overlap.
    let ok = text.replace("11:00-13:00", "11:30-13:00");
    assert_eq!(errors(&ok), Vec::<String>::new());
}

#[test]
fn unknown_schedule_and_bad_day() {
    let text = format!(
        "{BASE}\n[schedules.x]\ndays = [\"funday\"]\n\n[profiles.personnel]\n[[profiles.personnel.rules]]\naction = \"block\"\ncategories = [\"gambling\"]\nschedule = \"travial\"\n"
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].starts_with("vigie.toml:23:9: in schedule \"x\": unknown day \"funday\""),
        "{errs:?}"
    );
    assert_eq!(
        errs[1],
        r#"vigie.toml:29:12: unknown schedule "travial" in profile "personnel" — did you mean "travail"?"#
    );
}

#[test]
fn type_errors_are_located() {
    let text = BASE.replace("block = [\"gambling\"]", "block = \"gambling\"");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("vigie.toml:17:9: invalid type"),
        "{errs:?}"
    );
}

#[test]
fn syntax_error_is_located() {
    let errs = errors("timezone = \"America/Toronto\"\n[profiles.eleves\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("vigie.toml:2:"), "{errs:?}");
}

#[test]
fn overrides_parse() {
    assert_eq!(
        parse_override("Example.ORG."),
        Ok(Override::Domain("example.org".into()))
    );
    assert_eq!(
        parse_override("*.example.org"),
        Ok(Override::Domain("example.org".into()))
    );
    assert_eq!(
        parse_override("https://www.site.com/cours/"),
        Ok(Override::Url {
            host: "site.com".into(),
            path: "/cours/".into()
        })
    );
    assert!(parse_override("bad host!/x").is_err());
}

#[test]
fn networks_sorted_most_specific_first() {
    let text = format!(
        "{BASE}\n[[networks]]\ncidr = \"10.0.0.0/8\"\nprofile = \"invites\"\n\n[[networks]]\ncidr = \"10.1.0.0/16\"\nprofile = \"eleves\"\n"
    );
    let c = parse(&text, "vigie.toml", Path::new("/")).unwrap();
    assert_eq!(c.networks[0].net.to_string(), "10.1.0.0/16");
}

#[test]
fn relative_list_paths_resolve_against_lists_dir() {
    let text = format!(
        "lists_dir = \"lists\"\n{BASE}\n[[lists]]\ncategory = \"gambling\"\nformat = \"domains\"\npath = \"g.txt\"\n"
    );
    let c = parse(&text, "vigie.toml", Path::new("/etc/vigie")).unwrap();
    assert_eq!(c.sources[0].path, Path::new("/etc/vigie/lists/g.txt"));
}

#[test]
fn categories_and_lists_default_to_the_embedded_ones() {
    let text = "[profiles.invites]\nblock = [\"gambling\", \"p2p\"]\n";
    let c = parse(text, "ecole.toml", Path::new("/etc/vigie")).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.category_id("gambling").is_some());
    let gambling = c
        .sources
        .iter()
        .find(|s| s.path.ends_with("ut1/gambling"))
        .expect("default gambling list");
    assert_eq!(gambling.path, shipped_lists_dir().join("ut1/gambling"));
    // Own lists replace the default ones (categories still default).
    let own = format!(
        "{text}[[lists]]\ncategory = \"gambling\"\nformat = \"domains\"\npath = \"g.txt\"\n"
    );
    let c = parse(&own, "ecole.toml", Path::new("/etc/vigie")).unwrap();
    assert_eq!(c.sources.len(), 1);
    assert_eq!(c.sources[0].path, Path::new("/etc/vigie/g.txt"));
}

#[test]
fn example_appliance_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/vigie.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = parse(&text, "deploy/vigie.toml", Path::new("/etc/vigie"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.networks.len(), 4);
    assert_eq!(
        c.networks[0].net.to_string(),
        "10.30.5.0/24",
        "most specific first"
    );
    assert_eq!(c.portal.networks.len(), 1);
    assert_eq!(c.portal.idle_timeout.as_secs(), 1800);
}

#[test]
fn portal_audit_and_record_allowed_settings() {
    let text = format!(
        "{BASE}record_allowed = false\n[audit]\npseudonymize = true\n[portal]\nnetworks = [\"10.9.0.0/16\"]\nidle_timeout_seconds = 60\nurl = \"http://portail.ecole/portal/\"\n"
    );
    let c = parse(&text, "vigie.toml", Path::new("/etc/vigie")).unwrap_or_else(|e| panic!("{e}"));
    let invites = c.profile_id("invites").unwrap();
    let eleves = c.profile_id("eleves").unwrap();
    assert!(
        !c.records_allowed(invites, true),
        "the profile's own choice wins"
    );
    assert!(c.records_allowed(eleves, true), "else the service's");
    assert!(c.audit.pseudonymize);
    assert_eq!(c.portal.idle_timeout.as_secs(), 60);
    assert_eq!(c.portal.max_session.as_secs(), 36_000);
    assert_eq!(c.portal.url.as_deref(), Some("http://portail.ecole/portal"));
    let bad = "[profiles.invites]\n[portal]\nnetworks = [\"10.9.0.0/33\"]\nidle_timeout_seconds = 0\nurl = \"portail\"\nwhat = 1\n";
    let e = errors(bad);
    assert!(
        e.iter()
            .any(|m| m.starts_with("vigie.toml:3:13: ") && m.contains("10.9.0.0/33")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("vigie.toml:4:24: ") && m.contains("idle_timeout_seconds = 0")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("vigie.toml:5:7: ") && m.contains("must start with http://")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("vigie.toml:6:1: ") && m.contains("what")),
        "{e:?}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// Arbitrary text never panics the validator, and every error has a position
    /// inside the text.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        if let Err(e) = parse(&text, "f.toml", Path::new("/")) {
            for d in &e.0 {
                proptest::prop_assert!(d.line >= 1 && d.line <= text.lines().count().max(1) + 1, "{d}");
            }
        }
    }

    /// Damaging one byte of a valid config gives either a valid config or located
    /// errors, never a panic.
    #[test]
    fn one_byte_damage_is_located(pos in 0usize..2000, byte in proptest::prelude::any::<u8>()) {
        let mut bytes = BASE.as_bytes().to_vec();
        let pos = pos % bytes.len();
        bytes[pos] = byte;
        if let Ok(text) = String::from_utf8(bytes)
            && let Err(e) = parse(&text, "f.toml", Path::new("/"))
        {
            proptest::prop_assert!(!e.0.is_empty());
            for d in &e.0 {
                proptest::prop_assert!(d.line >= 1 && d.column >= 1, "{d}");
            }
        }
    }
}

#[test]
fn admin_section_roles_sessions_and_tls() {
    let ok = format!(
        "{BASE}
[admin]
session_minutes = 60
tls_listen = \"127.0.0.1:8443\"
[[admin.roles]]
user = \"mdupont\"
role = \"director\"
networks = [\"10.1.0.0/16\"]
[[admin.roles]]
group = \"CN=TI,DC=ecole\"
role = \"it-admin\"
"
    );
    let c = parse(&ok, "vigie.toml", Path::new("/etc/vigie")).unwrap();
    assert_eq!(c.admin.session, std::time::Duration::from_secs(3600));
    assert_eq!(c.admin.tls_listen, Some("127.0.0.1:8443".parse().unwrap()));
    let roles = c.admin.roles_of("mdupont", &["cn=ti,dc=ecole"]);
    assert_eq!(roles.len(), 2);
    assert_eq!(roles[0].0, AdminRole::ItAdmin);
    assert_eq!(
        roles[1],
        (AdminRole::Director, vec!["10.1.0.0/16".parse().unwrap()])
    );
    assert!(c.admin.roles_of("x", &[] as &[&str]).is_empty());

    let bad = errors(&format!(
        "{BASE}
[admin]
session_minutes = 1
tls_key_file = \"k.pem\"
[[admin.roles]]
user = \"a\"
role = \"directr\"
[[admin.roles]]
user = \"b\"
group = \"cn=x\"
role = \"auditor\"
[[admin.roles]]
user = \"c\"
role = \"auditor\"
networks = [\"10.0.0.0/8\"]
"
    ));
    let all = bad.join("\n");
    assert!(
        all.contains("unknown admin role \"directr\"")
            && all.contains("did you mean \"director\"?"),
        "{all}"
    );
    assert!(all.contains("needs exactly one of user"), "{all}");
    assert!(all.contains("networks only restrict a director"), "{all}");
    assert!(all.contains("session_minutes = 1"), "{all}");
    assert!(all.contains("go together"), "{all}");
    assert!(bad.iter().all(|e| e.starts_with("vigie.toml:")), "{all}");
}

#[test]
fn lists_update_urls_are_https_only_and_errors_are_located() {
    let text = format!(
        r#"{BASE}
[lists_update]
ut1_url = "http://dsi.example.fr/blacklists.tar.gz"
max_bad_share = 1.5
min_share_of_current = -0.1

[[lists]]
category = "gambling"
format = "domains"
path = "extra/gambling.txt"
url = "http://lists.example/gambling.txt"

[[lists]]
category = "gambling"
format = "ut1"
path = "ut1/gambling"
url = "https://lists.example/gambling.tar.gz"

[[lists]]
category = "gambling"
format = "domains"
path = "/srv/lists/abs.txt"
url = "https://lists.example/abs.txt"

[[lists]]
category = "gambling"
format = "domains"
path = "other.txt"
url = "ftp://lists.example/other.txt"
"#
    );
    let e = errors(&text);
    let line = |needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let has = |l: usize, what: &str| {
        assert!(
            e.iter()
                .any(|m| m.starts_with(&format!("vigie.toml:{l}:")) && m.contains(what)),
            "line {l} \"{what}\" in {e:#?}"
        )
    };
    has(line("http://dsi.example.fr"), "plain http://");
    has(line("max_bad_share"), "between 0 and 1");
    has(line("min_share_of_current"), "between 0 and 1");
    has(line("http://lists.example/gambling.txt"), "https:// only");
    has(
        line("https://lists.example/gambling.tar.gz"),
        "refreshed from lists_update.ut1_url",
    );
    has(line("/srv/lists/abs.txt"), "relative path");
    has(line("ftp://"), "not an https:// URL");
    assert_eq!(e.len(), 7, "{e:#?}");
}

#[test]
fn lists_update_targets_and_the_updated_set_overlay() {
    let tmp = tempfile::tempdir().unwrap();
    let shipped = tmp.path().join("shipped");
    let text = format!(
        r#"lists_dir = "{shipped}"
{BASE}

[[lists]]
category = "gambling"
format = "ut1"
path = "ut1/gambling"

[[lists]]
category = "social_networks"
format = "domains"
path = "social/list.txt"
url = "https://lists.example/social.txt"

[[lists]]
category = "social_networks"
format = "domains"
path = "own/local.txt"
"#,
        shipped = shipped.display()
    );
    let mut c = parse(&text, "vigie.toml", tmp.path()).unwrap();
    let u = &c.lists_update;
    assert_eq!(u.ut1_url.as_deref(), Some(DEFAULT_UT1_URL));
    assert_eq!(u.max_bad_share, 0.05);
    assert_eq!(u.min_share_of_current, 0.5);
    assert_eq!(u.keep, 2);
    assert_eq!(
        u.targets
            .iter()
            .map(|t| (t.source, t.origin.clone()))
            .collect::<Vec<_>>(),
        vec![
            (
                0,
                UpdateOrigin::Ut1 {
                    category_dir: "gambling".into()
                }
            ),
            (
                1,
                UpdateOrigin::Url("https://lists.example/social.txt".into())
            ),
        ]
    );
    // A set holding the UT1 category only: that list moves, the url list keeps
    // its shipped file until a set has it, the list without url never moves.
    let set = tmp.path().join("set");
    std::fs::create_dir_all(set.join("ut1/gambling")).unwrap();
    c.use_lists_set(Some(&set));
    assert_eq!(c.sources[0].path, set.join("ut1/gambling"));
    assert_eq!(c.sources[1].path, shipped.join("social/list.txt"));
    assert_eq!(c.sources[2].path, shipped.join("own/local.txt"));
    std::fs::create_dir_all(set.join("social")).unwrap();
    std::fs::write(set.join("social/list.txt"), "x.example\n").unwrap();
    std::fs::create_dir_all(set.join("own")).unwrap();
    std::fs::write(set.join("own/local.txt"), "x.example\n").unwrap();
    c.use_lists_set(Some(&set));
    assert_eq!(c.sources[1].path, set.join("social/list.txt"));
    assert_eq!(c.sources[2].path, shipped.join("own/local.txt"));
    c.use_lists_set(None);
    assert_eq!(c.sources[0].path, shipped.join("ut1/gambling"));
    assert_eq!(c.lists_set, None);

    // A data_dir whose `lists/current` names a set: loading reads from it.
    let data = tmp.path().join("data");
    let dir = crate::lists::sets::ListsDir::new(&data);
    let s = dir.create_set(chrono::Utc::now()).unwrap();
    std::fs::create_dir_all(s.join("ut1/gambling")).unwrap();
    dir.complete(&s).unwrap();
    dir.switch_to(Some(&s)).unwrap();
    let with_data = format!("data_dir = \"{}\"\n{text}", data.display());
    let c = parse(&with_data, "vigie.toml", tmp.path()).unwrap();
    assert_eq!(c.lists_set.as_deref(), Some(s.as_path()));
    assert_eq!(c.sources[0].path, s.join("ut1/gambling"));
}

/// Errors about plain settings (numbers, flags, lists) point at the value as
/// written, like those about `Spanned` ones: never `vigie.toml:1:1`.
#[test]
fn plain_settings_errors_are_located_at_their_value() {
    let text = format!(
        r#"{BASE}
[schedules.jamais]
days = []

[dns]
rate_limit_burst = 0
upstream_timeout_ms = 0

[proxy]
connect_ports = [443, 0]
max_header_bytes = 100
idle_timeout_ms = 0
via_name = "a b"
auth_realm = "x\"y"
review_url = "ftp://x"

[audit]
store = "postgres"
postgres_url_file = "no-such-file"
"#
    );
    let e = errors(&text);
    let at = |needle: &str| {
        let line = text.lines().position(|l| l.starts_with(needle)).unwrap();
        let col = text.lines().nth(line).unwrap().find(" = ").unwrap() + 4;
        format!("vigie.toml:{}:{col}: ", line + 1)
    };
    let has = |needle: &str, what: &str| {
        let prefix = at(needle);
        assert!(
            e.iter().any(|m| m.starts_with(&prefix) && m.contains(what)),
            "{prefix}{what} not in {e:#?}"
        )
    };
    has("days = []", "has no days");
    has("rate_limit_burst", "rate_limit_burst must be at least 1");
    has(
        "upstream_timeout_ms",
        "upstream_timeout_ms must be at least 1",
    );
    has("connect_ports", "0 is not a port");
    has("max_header_bytes", "at least 8192");
    has("idle_timeout_ms", "idle_timeout_ms must be at least 1");
    has("via_name", "via_name");
    has("auth_realm", "auth_realm");
    has("review_url", "review_url");
    has("postgres_url_file", "no-such-file");
    has("store", "needs postgres_url");
    assert!(
        e.iter().all(|m| !m.starts_with("vigie.toml:1:1:")),
        "{e:#?}"
    );
}

#[test]
fn too_many_categories_points_at_the_first_one_past_the_limit() {
    let mut text = String::from("[profiles.invites]\n");
    for i in 0..=crate::lists::CatSet::MAX {
        text.push_str(&format!(
            "[[categories]]\nid = \"c{i}\"\nfr = \"c\"\nen = \"c\"\n"
        ));
    }
    let e = errors(&text);
    let line = text
        .lines()
        .position(|l| l == format!("id = \"c{}\"", crate::lists::CatSet::MAX))
        .unwrap()
        + 1;
    assert!(
        e.iter()
            .any(|m| m.starts_with(&format!("vigie.toml:{line}:6: too many categories"))),
        "{e:#?}"
    );
}
