use chrono::TimeZone;

use super::*;
use crate::config;
use crate::identity::IdentitySource;

/// A small config with its lists in a temporary directory.
fn snapshot() -> (tempfile::TempDir, Snapshot) {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("gambling.txt", "casino.example\npoker.test\n");
    write("social.txt", "facebook.test\n");
    write("both.txt", "poker.test\n");
    write("adult-urls.txt", "");
    std::fs::create_dir(dir.path().join("adult")).unwrap();
    std::fs::write(dir.path().join("adult/urls"), "host.test/adult\n").unwrap();
    write("tor.txt", "192.0.2.7\n2001:db8::/32\n");
    let text = r#"
timezone = "America/Toronto"
default_profile = "invites"

[[categories]]
id = "gambling"
fr = "Jeux d'argent"
en = "Gambling"
[[categories]]
id = "social_networks"
fr = "Réseaux sociaux"
en = "Social networks"
[[categories]]
id = "games"
fr = "Jeux"
en = "Games"
[[categories]]
id = "adult"
fr = "Adulte"
en = "Adult"
[[categories]]
id = "tor"
fr = "Tor"
en = "Tor"
[[categories]]
id = "doh"
fr = "DoH"
en = "DoH"

[[lists]]
category = "gambling"
format = "domains"
path = "gambling.txt"
[[lists]]
category = "social_networks"
format = "domains"
path = "social.txt"
[[lists]]
category = "games"
format = "domains"
path = "both.txt"
[[lists]]
category = "adult"
format = "ut1"
path = "adult"
[[lists]]
category = "tor"
format = "cidr"
path = "tor.txt"

[schedules.travail]
days = ["mon-fri"]
times = ["08:00-11:30", "13:00-16:00"]

[profiles.eleves]
block = ["gambling", "games", "adult", "tor", "doh", "social_networks"]
allow = ["ok.casino.example", "host.test/adult/but-fine"]
deny = ["forbidden.test"]
safe_search = "strict"
bare_ip = "block"

[profiles.personnel]
block = ["gambling"]
safe_search = "moderate"
bare_ip = "allow"
[[profiles.personnel.rules]]
action = "block"
categories = ["social_networks"]
schedule = "travail"

[profiles.invites]
block = ["gambling", "games", "social_networks", "adult", "tor", "doh"]
safe_search = "strict"

[[networks]]
cidr = "10.1.0.0/16"
profile = "eleves"
[[networks]]
cidr = "10.2.0.0/16"
profile = "personnel"
"#;
    let cfg = config::parse(text, "test.toml", dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let snap = Snapshot::build(cfg, None).unwrap_or_else(|e| panic!("{e}"));
    (dir, snap)
}

fn who(s: &Snapshot, profile: &str) -> Identity {
    Identity::profile(
        s.config.profile_id(profile).unwrap(),
        IdentitySource::Operator,
    )
}

/// Local Toronto time on 2026-11-<day> (the 23rd is a Monday).
fn at(day: u32, h: u32, m: u32) -> DateTime<Utc> {
    chrono_tz::America::Toronto
        .with_ymd_and_hms(2026, 11, day, h, m, 0)
        .unwrap()
        .with_timezone(&Utc)
}

fn dns(name: &str) -> Request<'_> {
    Request::Dns { name, qtype: 1 }
}

#[test]
fn listed_domain_and_subdomain_blocked() {
    let (_d, s) = snapshot();
    let id = who(&s, "eleves");
    for name in [
        "casino.example",
        "www.casino.example",
        "A.B.Casino.Example.",
    ] {
        let d = decide(&s, &dns(name), &id, at(23, 10, 0));
        assert_eq!(d.verdict, Verdict::Block, "{name}");
        assert_eq!(d.category_name(&s), "gambling");
        assert_eq!(d.reason, Reason::BlockedCategory);
        assert_eq!(d.entry(&s, &dns(name)).as_deref(), Some("casino.example"));
    }
    let d = decide(&s, &dns("notcasino.example"), &id, at(23, 10, 0));
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.reason, Reason::Default);
}

#[test]
fn several_categories_reported_and_first_blocked_named() {
    let (_d, s) = snapshot();
    let d = decide(&s, &dns("poker.test"), &who(&s, "personnel"), at(23, 10, 0));
    assert_eq!(d.verdict, Verdict::Block);
    assert_eq!(d.category_name(&s), "gambling");
    let listed: Vec<&str> = d.listed.iter().map(|c| s.category_name(c)).collect();
    assert_eq!(listed, ["gambling", "games"]);
}

#[test]
fn precedence_allow_then_deny_then_category() {
    let (_d, s) = snapshot();
    let id = who(&s, "eleves");
    let d = decide(&s, &dns("x.ok.casino.example"), &id, at(23, 10, 0));
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.reason, Reason::AllowOverride(0));
    assert!(
        d.rule(&s).contains("allow ok.casino.example"),
        "{}",
        d.rule(&s)
    );
    let d = decide(&s, &dns("forbidden.test"), &id, at(23, 10, 0));
    assert_eq!(d.verdict, Verdict::Block);
    assert_eq!(d.reason, Reason::DenyOverride(0));
    // The deny override is the profile's: other profiles are unaffected.
    let d = decide(
        &s,
        &dns("forbidden.test"),
        &who(&s, "personnel"),
        at(23, 10, 0),
    );
    assert_eq!(d.verdict, Verdict::Allow);
}

#[test]
fn schedule_blocks_staff_social_networks_in_work_hours_only() {
    let (_d, s) = snapshot();
    let id = who(&s, "personnel");
    let q = dns("www.facebook.test");
    let d = decide(&s, &q, &id, at(23, 10, 0));
    assert_eq!(d.verdict, Verdict::Block, "Monday 10:00");
    assert_eq!(d.reason, Reason::ScheduledRule(0));
    assert!(d.rule(&s).contains("during travail"), "{}", d.rule(&s));
    assert_eq!(
        decide(&s, &q, &id, at(23, 12, 15)).verdict,
        Verdict::Allow,
        "Monday lunch"
    );
    assert_eq!(
        decide(&s, &q, &id, at(28, 10, 0)).verdict,
        Verdict::Allow,
        "Saturday"
    );
    assert_eq!(
        decide(&s, &q, &id, at(23, 16, 0)).verdict,
        Verdict::Allow,
        "end is exclusive"
    );
    let trace = decide(&s, &q, &id, at(23, 12, 15)).explain(&s, &q, &id, at(23, 12, 15));
    assert!(
        trace
            .iter()
            .any(|l| l.contains("not active") && l.contains("travail")),
        "{trace:#?}"
    );
}

#[test]
fn url_entries_match_by_path_segment() {
    let (_d, s) = snapshot();
    let id = who(&s, "eleves");
    let get = |url: &'static str| {
        decide(
            &s,
            &Request::Http { method: "GET", url },
            &id,
            at(23, 10, 0),
        )
    };
    assert_eq!(get("http://host.test/adult/page").verdict, Verdict::Block);
    assert_eq!(get("http://www.host.test/adult").verdict, Verdict::Block);
    assert_eq!(get("http://host.test/adults").verdict, Verdict::Allow);
    assert_eq!(get("http://host.test/other").verdict, Verdict::Allow);
    // A URL allow override beats the category.
    let d = get("http://host.test/adult/but-fine/x");
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.reason, Reason::AllowOverride(1));
}

#[test]
fn ip_lists_and_bare_ip_policy() {
    let (_d, s) = snapshot();
    let eleves = who(&s, "eleves");
    let staff = who(&s, "personnel");
    let tor: IpAddr = "192.0.2.7".parse().unwrap();
    let d = decide(
        &s,
        &Request::Tls {
            host: Some("relay.test"),
            port: 443,
            ip: Some(tor),
        },
        &eleves,
        at(23, 10, 0),
    );
    assert_eq!(d.verdict, Verdict::Block);
    assert_eq!(d.category_name(&s), "tor");
    let other: IpAddr = "198.51.100.1".parse().unwrap();
    let d = decide(
        &s,
        &Request::Ip {
            ip: other,
            port: 443,
        },
        &eleves,
        at(23, 10, 0),
    );
    assert_eq!((d.verdict, d.reason), (Verdict::Block, Reason::BareIp));
    let d = decide(
        &s,
        &Request::Ip {
            ip: other,
            port: 443,
        },
        &staff,
        at(23, 10, 0),
    );
    assert_eq!(d.verdict, Verdict::Allow);
    // A bare IP in a URL is a bare IP too, including IPv4-mapped IPv6.
    let d = decide(
        &s,
        &Request::Http {
            method: "GET",
            url: "http://[::ffff:198.51.100.1]/",
        },
        &eleves,
        at(23, 10, 0),
    );
    assert_eq!(d.reason, Reason::BareIp);
    // Staff do not block tor: listed, reported, allowed.
    let d = decide(
        &s,
        &Request::Tls {
            host: Some("2001:db8::1"),
            port: 443,
            ip: None,
        },
        &staff,
        at(23, 10, 0),
    );
    assert_eq!(d.verdict, Verdict::Allow);
    assert!(d.listed.contains(s.config.category_id("tor").unwrap()));
    let d = decide(
        &s,
        &Request::Tls {
            host: Some("2001:db8::1"),
            port: 443,
            ip: None,
        },
        &eleves,
        at(23, 10, 0),
    );
    assert_eq!((d.verdict, d.category_name(&s)), (Verdict::Block, "tor"));
}

#[test]
fn safe_search_and_circumvention_names() {
    let (_d, s) = snapshot();
    let d = decide(&s, &dns("www.google.ca"), &who(&s, "eleves"), at(23, 10, 0));
    assert_eq!(
        d.verdict,
        Verdict::SafeSearch {
            target: "forcesafesearch.google.com"
        }
    );
    let d = decide(
        &s,
        &dns("www.youtube.com"),
        &who(&s, "personnel"),
        at(23, 10, 0),
    );
    assert_eq!(
        d.verdict,
        Verdict::SafeSearch {
            target: "restrictmoderate.youtube.com"
        }
    );
    let d = decide(
        &s,
        &dns("use-application-dns.net"),
        &who(&s, "eleves"),
        at(23, 10, 0),
    );
    assert_eq!(
        (d.verdict, d.reason),
        (Verdict::Block, Reason::Circumvention)
    );
    assert_eq!(d.category_name(&s), "doh");
    // Staff do not block doh here: the canary resolves normally.
    let d = decide(
        &s,
        &dns("mask.icloud.com"),
        &who(&s, "personnel"),
        at(23, 10, 0),
    );
    assert_eq!(d.verdict, Verdict::Allow);
}

#[test]
fn network_map_and_default_profile() {
    let (_d, s) = snapshot();
    let ip = |t: &str| t.parse::<IpAddr>().unwrap();
    assert_eq!(
        s.profile_name(Identity::from_ip(&s, ip("10.1.4.5")).profile),
        "eleves"
    );
    assert_eq!(
        s.profile_name(Identity::from_ip(&s, ip("::ffff:10.2.0.9")).profile),
        "personnel"
    );
    let unknown = Identity::from_ip(&s, ip("192.168.1.1"));
    assert_eq!(s.profile_name(unknown.profile), "invites");
    assert_eq!(unknown.source, IdentitySource::Default);
    assert!(s.is_client(ip("192.168.1.1")));
    assert!(!s.is_client(ip("8.8.8.8")));
}

#[test]
fn unknown_profile_fails_closed() {
    let (_d, s) = snapshot();
    let id = Identity::profile(99, IdentitySource::Operator);
    assert_eq!(
        decide(&s, &dns("example.org"), &id, at(23, 10, 0)).verdict,
        Verdict::Block
    );
}

#[test]
fn explain_names_list_file_and_line() {
    let (dir, s) = snapshot();
    let q = dns("www.poker.test");
    let id = who(&s, "eleves");
    let d = decide(&s, &q, &id, at(23, 10, 0));
    let trace = d.explain(&s, &q, &id, at(23, 10, 0)).join("\n");
    let file = dir.path().join("gambling.txt");
    assert!(
        trace.contains(&format!(
            "matched entry \"poker.test\" of list {}:2",
            file.display()
        )),
        "{trace}"
    );
    assert!(trace.contains("decision: block"), "{trace}");
}

#[test]
fn split_url_forms() {
    assert_eq!(
        split_url("http://user:pw@Host.test:8080/a?b"),
        ("Host.test", "/a?b")
    );
    assert_eq!(split_url("https://[2001:db8::1]:443"), ("2001:db8::1", "/"));
    assert_eq!(split_url("host.test/path"), ("host.test", "/path"));
}

/// A host listed in more entries than a lookup keeps still blocks for the one
/// category the profile blocks, even when that entry is the one left out.
#[test]
fn blocked_category_beyond_the_kept_hits_still_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("default_profile = \"p\"\n");
    for i in 0..20 {
        std::fs::write(dir.path().join(format!("c{i}.txt")), "a.b.c.example.org\n").unwrap();
        text.push_str(&format!(
            "[[categories]]\nid = \"c{i}\"\nfr = \"c{i}\"\nen = \"c{i}\"\n[[lists]]\ncategory = \"c{i}\"\nformat = \"domains\"\npath = \"c{i}.txt\"\n"
        ));
    }
    text.push_str("[profiles.p]\nblock = [\"c19\"]\n");
    let cfg = config::parse(&text, "t.toml", dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let snap = Snapshot::build(cfg, None).unwrap_or_else(|e| panic!("{e}"));
    let id = Identity::profile(0, IdentitySource::Operator);
    for name in ["a.b.c.example.org", "x.a.b.c.example.org"] {
        let d = decide(&snap, &Request::Dns { name, qtype: 1 }, &id, Utc::now());
        assert_eq!(d.verdict, Verdict::Block, "{name}");
        assert_eq!(d.category, snap.config.category_id("c19"));
        assert_eq!(d.listed.iter().count(), 20);
        // The trace still explains it.
        let t = d.explain(&snap, &Request::Dns { name, qtype: 1 }, &id, Utc::now());
        assert!(!t.is_empty());
    }
}

#[test]
fn protocols_seen_in_the_first_bytes_follow_their_category() {
    let (_d, s) = snapshot();
    let stream = |protocol, category| Request::Stream { protocol, category };
    // `tor` is configured and blocked for students, not for staff.
    let req = stream("obfs4", "tor");
    let d = decide(&s, &req, &who(&s, "eleves"), at(23, 10, 0));
    assert_eq!((d.verdict, d.category_name(&s)), (Verdict::Block, "tor"));
    assert_eq!(d.matched, Some(Matched::Signature("obfs4")));
    assert_eq!(d.entry(&s, &req).as_deref(), Some("obfs4"));
    assert!(
        d.explain(&s, &req, &who(&s, "eleves"), at(23, 10, 0))
            .iter()
            .any(|l| l.contains("detected protocol \"obfs4\"")),
    );
    let d = decide(&s, &req, &who(&s, "personnel"), at(23, 10, 0));
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(
        d.listed.iter().count(),
        1,
        "still reported as listed in tor"
    );
    // A category the configuration does not have: refused for everyone.
    let req = stream("bittorrent", "p2p");
    let d = decide(&s, &req, &who(&s, "personnel"), at(23, 10, 0));
    assert_eq!((d.verdict, d.reason), (Verdict::Block, Reason::Signature));
    assert!(d.rule(&s).contains("not configured"), "{}", d.rule(&s));
}
