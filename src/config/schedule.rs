//! Weekly schedules: days of the week and time ranges, read in the configured
//! time zone. Pure data; `active_at` takes the local time as an argument.

use chrono::{Datelike, Timelike};

/// Days as a bitmask (bit 0 = Monday … bit 6 = Sunday) and minute ranges
/// `[start, end)` within a day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub name: String,
    pub days: u8,
    pub ranges: Vec<(u16, u16)>,
}

const DAY_NAMES: [[&str; 4]; 7] = [
    ["mon", "monday", "lun", "lundi"],
    ["tue", "tuesday", "mar", "mardi"],
    ["wed", "wednesday", "mer", "mercredi"],
    ["thu", "thursday", "jeu", "jeudi"],
    ["fri", "friday", "ven", "vendredi"],
    ["sat", "saturday", "sam", "samedi"],
    ["sun", "sunday", "dim", "dimanche"],
];

fn day_index(s: &str) -> Option<u8> {
    let s = s.trim().to_lowercase();
    DAY_NAMES
        .iter()
        .position(|names| names.contains(&s.as_str()))
        .map(|i| i as u8)
}

/// `"mon"`, `"lundi"`, `"mon-fri"`, `"lun-ven"` → day bitmask. A range may wrap
/// (`"sat-mon"`).
pub fn parse_days(s: &str) -> Result<u8, String> {
    let unknown = |d: &str| {
        format!(
            "unknown day \"{d}\" (use mon, tue, wed, thu, fri, sat, sun or lun … dim, or a range like mon-fri)"
        )
    };
    match s.split_once('-') {
        None => day_index(s).map(|d| 1 << d).ok_or_else(|| unknown(s)),
        Some((a, b)) => {
            let from = day_index(a).ok_or_else(|| unknown(a))?;
            let to = day_index(b).ok_or_else(|| unknown(b))?;
            let mut mask = 0u8;
            let mut d = from;
            loop {
                mask |= 1 << d;
                if d == to {
                    break;
                }
                d = (d + 1) % 7;
            }
            Ok(mask)
        }
    }
}

fn parse_hhmm(s: &str, allow_24: bool) -> Result<u16, String> {
    let bad = || format!("invalid time \"{s}\" (expected HH:MM)");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m >= 60 || h > 24 || (h == 24 && (m != 0 || !allow_24)) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// `"08:00-11:30"` → minutes `(480, 690)`; `24:00` is allowed as an end.
pub fn parse_time_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("invalid time range \"{s}\" (expected HH:MM-HH:MM)"))?;
    let start = parse_hhmm(a, false)?;
    let end = parse_hhmm(b, true)?;
    if end <= start {
        return Err(format!(
            "time range \"{s}\" ends before it starts (a range cannot cross midnight: split it in two)"
        ));
    }
    Ok((start, end))
}

impl Schedule {
    pub fn new(name: String) -> Self {
        Schedule {
            name,
            days: 0,
            ranges: Vec::new(),
        }
    }

    /// Whether the schedule covers this local wall-clock time.
    pub fn active_at<T: Datelike + Timelike>(&self, local: &T) -> bool {
        let day = local.weekday().num_days_from_monday() as u8;
        if self.days & (1 << day) == 0 {
            return false;
        }
        let minute = (local.hour() * 60 + local.minute()) as u16;
        self.ranges.iter().any(|&(s, e)| s <= minute && minute < e)
    }

    /// Whether some minute of some week is covered by both schedules.
    pub fn overlaps(&self, other: &Schedule) -> bool {
        self.days & other.days != 0
            && self
                .ranges
                .iter()
                .any(|&(a, b)| other.ranges.iter().any(|&(c, d)| a < d && c < b))
    }

    /// Human-readable form for explain traces, e.g. `mon,tue 08:00-11:30`.
    pub fn describe(&self) -> String {
        let days: Vec<&str> = (0..7)
            .filter(|d| self.days & (1 << d) != 0)
            .map(|d| DAY_NAMES[d as usize][0])
            .collect();
        let ranges: Vec<String> = self
            .ranges
            .iter()
            .map(|&(s, e)| format!("{:02}:{:02}-{:02}:{:02}", s / 60, s % 60, e / 60, e % 60))
            .collect();
        format!("{} {}", days.join(","), ranges.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    #[test]
    fn days_and_ranges() {
        assert_eq!(parse_days("mon-fri"), Ok(0b0011111));
        assert_eq!(parse_days("lun-ven"), Ok(0b0011111));
        assert_eq!(parse_days("sat-mon"), Ok(0b1100001));
        assert_eq!(parse_days("Dimanche"), Ok(0b1000000));
        assert!(
            parse_days("funday")
                .unwrap_err()
                .contains("unknown day \"funday\"")
        );
        assert_eq!(parse_time_range("08:00-11:30"), Ok((480, 690)));
        assert_eq!(parse_time_range("13:00-24:00"), Ok((780, 1440)));
        assert!(
            parse_time_range("11:30-08:00")
                .unwrap_err()
                .contains("ends before it starts")
        );
        assert!(parse_time_range("8h-9h").is_err());
        assert!(parse_time_range("08:60-09:00").is_err());
    }

    #[test]
    fn active_and_overlap() {
        let mut s = Schedule::new("travail".into());
        s.days = parse_days("mon-fri").unwrap();
        s.ranges = vec![(480, 690), (780, 960)];
        // 2026-11-23 is a Monday.
        let at = |d, h, m| {
            NaiveDate::from_ymd_opt(2026, 11, d)
                .unwrap()
                .and_hms_opt(h, m, 0)
                .unwrap()
        };
        assert!(s.active_at(&at(23, 10, 0)));
        assert!(!s.active_at(&at(23, 12, 15)));
        assert!(!s.active_at(&at(23, 11, 30)), "end is exclusive");
        assert!(!s.active_at(&at(28, 10, 0)), "Saturday");
        let mut lunch = Schedule::new("midi".into());
        lunch.days = parse_days("mon-fri").unwrap();
        lunch.ranges = vec![(690, 780)];
        assert!(!s.overlaps(&lunch));
        lunch.ranges = vec![(680, 780)];
        assert!(s.overlaps(&lunch));
        assert_eq!(s.describe(), "mon,tue,wed,thu,fri 08:00-11:30,13:00-16:00");
    }
}
