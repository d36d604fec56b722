//! When timers fire: StackStorm's `core.st2.IntervalTimer`, `DateTimer`
//! and `CronTimer`, whose parameters are APScheduler's.
//!
//! A cron schedule follows APScheduler's `CronTrigger`: fields `year`,
//! `month`, `day`, `week` (ISO week), `day_of_week` (0 or `mon` is Monday),
//! `hour`, `minute`, `second`, each an integer or a comma-separated list of
//! `*`, `*/step`, `a`, `a-b`, `a-b/step`, `a/step`, names (`mon-fri`,
//! `jan`), and for `day` also `last`, `last fri` and `2nd tue`. Fields left
//! out are `*` when more significant than the most significant one given,
//! and their minimum when less (`week` and `day_of_week` stay `*`), so
//! `hour: 3` fires daily at 03:00:00. Times are in the trigger's `timezone`
//! (an IANA name), UTC when it names none.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use crate::triggers;

/// A problem with a timer's parameters: the parameter and what is wrong.
pub type Problem = (String, String);

/// When a timer fires.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// At every multiple of the period since the Unix epoch, so that every
    /// node agrees on the ticks.
    Every(Duration),
    /// Once.
    Once(DateTime<Utc>),
    Cron(Box<Cron>),
}

impl Schedule {
    /// The schedule of a timer trigger of type `trigger_type`; `None` for a
    /// type that is not a timer.
    pub fn of(
        trigger_type: &str,
        parameters: &Map<String, Value>,
    ) -> Option<Result<Schedule, Vec<Problem>>> {
        let schedule = match trigger_type {
            triggers::INTERVAL_TIMER => interval(parameters),
            triggers::DATE_TIMER => timezone(parameters).and_then(|tz| date(parameters, tz)),
            triggers::CRON_TIMER => timezone(parameters)
                .and_then(|tz| Cron::parse(parameters, tz).map(Box::new))
                .map(Schedule::Cron),
            _ => return None,
        };
        Some(schedule)
    }

    /// The first time strictly after `t` that it fires, if any.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(period) => {
                let period = i64::try_from(period.as_millis()).ok()?.max(1);
                let tick = t.timestamp_millis().div_euclid(period) + 1;
                DateTime::from_timestamp_millis(tick.checked_mul(period)?)
            }
            Schedule::Once(at) => (*at > t).then_some(*at),
            Schedule::Cron(cron) => cron.next_after(t),
        }
    }
}

fn interval(parameters: &Map<String, Value>) -> Result<Schedule, Vec<Problem>> {
    let unit = match parameters.get("unit").and_then(Value::as_str) {
        Some("seconds") => 1,
        Some("minutes") => 60,
        Some("hours") => 3600,
        Some("days") => 86_400,
        Some("weeks") => 604_800,
        _ => {
            return Err(vec![problem(
                "unit",
                "must be one of weeks, days, hours, minutes, seconds",
            )])
        }
    };
    match parameters
        .get("delta")
        .and_then(Value::as_u64)
        .filter(|d| *d > 0)
    {
        Some(delta) => delta
            .checked_mul(unit)
            .map(|s| Schedule::Every(Duration::from_secs(s)))
            .ok_or_else(|| vec![problem("delta", "is too large")]),
        None => Err(vec![problem("delta", "must be a positive number of units")]),
    }
}

fn problem(field: &str, message: impl Into<String>) -> Problem {
    (field.to_string(), message.into())
}

fn timezone(parameters: &Map<String, Value>) -> Result<Tz, Vec<Problem>> {
    match parameters.get("timezone") {
        None | Some(Value::Null) => Ok(Tz::UTC),
        Some(Value::String(name)) => name.parse::<Tz>().map_err(|_| {
            vec![problem(
                "timezone",
                format!("{name:?} is not a time zone name (like UTC or Europe/Paris)"),
            )]
        }),
        Some(other) => Err(vec![problem(
            "timezone",
            format!("{other} is not a time zone name"),
        )]),
    }
}

/// A DateTimer's `date`: ISO 8601 with or without an offset (then in the
/// trigger's time zone), a space allowed for the `T`, seconds optional.
fn date(parameters: &Map<String, Value>, tz: Tz) -> Result<Schedule, Vec<Problem>> {
    let Some(text) = parameters.get("date").and_then(Value::as_str) else {
        return Err(vec![problem(
            "date",
            "is required: the date and time to fire at",
        )]);
    };
    if let Ok(at) = DateTime::parse_from_rfc3339(text.trim()) {
        return Ok(Schedule::Once(at.with_timezone(&Utc)));
    }
    let with_t = text.trim().replacen(' ', "T", 1);
    for format in ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M:%S%.f%z"] {
        if let Ok(at) = DateTime::parse_from_str(&with_t, format) {
            return Ok(Schedule::Once(at.with_timezone(&Utc)));
        }
    }
    let naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(&with_t, f).ok())
        .or_else(|| {
            NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
                .ok()
                .map(|d| d.and_time(NaiveTime::MIN))
        });
    let Some(naive) = naive else {
        return Err(vec![problem(
            "date",
            format!("{text:?} is not a date and time (like 2026-12-24 18:00:00)"),
        )]);
    };
    tz.from_local_datetime(&naive)
        .earliest()
        .map(|at| Schedule::Once(at.with_timezone(&Utc)))
        .ok_or_else(|| vec![problem("date", format!("{text:?} does not exist in {tz}"))])
}

/// The cron fields, most significant first, with their ranges and the
/// value a field less significant than every given one takes.
const FIELDS: [(&str, u32, u32, Option<u32>); 8] = [
    ("year", 1970, 9999, None),
    ("month", 1, 12, Some(1)),
    ("day", 1, 31, Some(1)),
    ("week", 1, 53, None),
    ("day_of_week", 0, 6, None),
    ("hour", 0, 23, Some(0)),
    ("minute", 0, 59, Some(0)),
    ("second", 0, 59, Some(0)),
];

const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// One expression of a field: the values `first..=last` every `step`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Range {
    first: u32,
    last: u32,
    step: u32,
}

impl Range {
    fn contains(&self, v: u32) -> bool {
        v >= self.first && v <= self.last && (v - self.first).is_multiple_of(self.step)
    }
}

/// `day` expressions that depend on the month.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MonthDay {
    /// `last`: the month's last day.
    Last,
    /// `2nd tue` (`nth` 1-5) or `last tue` (`nth` 0): a weekday's
    /// occurrence (`weekday` 0 = Monday).
    Weekday { nth: u32, weekday: u32 },
}

/// A parsed cron schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Cron {
    tz: Tz,
    /// Per field of [`FIELDS`], its ranges.
    fields: [Vec<Range>; 8],
    month_days: Vec<MonthDay>,
}

/// How many years ahead a cron schedule is searched for its next time.
const SEARCH_YEARS: i32 = 10;

impl Cron {
    fn parse(parameters: &Map<String, Value>, tz: Tz) -> Result<Cron, Vec<Problem>> {
        let mut problems = Vec::new();
        let last_given = FIELDS
            .iter()
            .rposition(|(name, ..)| parameters.contains_key(*name));
        let mut fields: [Vec<Range>; 8] = Default::default();
        let mut month_days = Vec::new();
        for (i, (name, min, max, default)) in FIELDS.iter().enumerate() {
            let text = match parameters.get(*name) {
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::String(s)) => s.trim().to_lowercase(),
                Some(other) => {
                    problems.push(problem(
                        name,
                        format!("{other} is neither a number nor a cron expression"),
                    ));
                    continue;
                }
                None => match (last_given, default) {
                    (Some(last), Some(d)) if i > last => d.to_string(),
                    _ => "*".to_string(),
                },
            };
            for expr in text.split(',').map(str::trim) {
                match parse_expr(name, expr, *min, *max) {
                    Ok(Expr::Range(r)) => fields[i].push(r),
                    Ok(Expr::MonthDay(d)) => month_days.push(d),
                    Err(message) => problems.push(problem(name, message)),
                }
            }
        }
        if problems.is_empty() {
            Ok(Cron {
                tz,
                fields,
                month_days,
            })
        } else {
            Err(problems)
        }
    }

    fn matches(&self, field: usize, v: u32) -> bool {
        self.fields[field].iter().any(|r| r.contains(v))
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        let day = date.day();
        self.matches(2, day)
            || self.month_days.iter().any(|d| match d {
                MonthDay::Last => day == days_in_month(date.year(), date.month()),
                MonthDay::Weekday { nth, weekday } => {
                    date.weekday().num_days_from_monday() == *weekday
                        && if *nth == 0 {
                            day + 7 > days_in_month(date.year(), date.month())
                        } else {
                            (day - 1) / 7 + 1 == *nth
                        }
                }
            })
    }

    fn date_matches(&self, date: NaiveDate) -> bool {
        self.day_matches(date)
            && self.matches(3, date.iso_week().week())
            && self.matches(4, date.weekday().num_days_from_monday())
    }

    /// The first time of day at or after `from` that matches.
    fn first_time_from(&self, from: NaiveTime) -> Option<NaiveTime> {
        for h in from.hour()..24 {
            if !self.matches(5, h) {
                continue;
            }
            let m0 = if h == from.hour() { from.minute() } else { 0 };
            for m in m0..60 {
                if !self.matches(6, m) {
                    continue;
                }
                let s0 = if h == from.hour() && m == from.minute() {
                    from.second()
                } else {
                    0
                };
                if let Some(s) = (s0..60).find(|s| self.matches(7, *s)) {
                    return NaiveTime::from_hms_opt(h, m, s);
                }
            }
        }
        None
    }

    fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = t.with_timezone(&self.tz).naive_local().with_nanosecond(0)?
            + chrono::Duration::seconds(1);
        let end_year = start.year() + SEARCH_YEARS;
        let mut cursor = start;
        while cursor.year() <= end_year {
            let date = cursor.date();
            let year = u32::try_from(date.year()).ok()?;
            if !self.matches(0, year) {
                cursor = NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)?.and_time(NaiveTime::MIN);
                continue;
            }
            if !self.matches(1, date.month()) {
                let (y, m) = if date.month() == 12 {
                    (date.year() + 1, 1)
                } else {
                    (date.year(), date.month() + 1)
                };
                cursor = NaiveDate::from_ymd_opt(y, m, 1)?.and_time(NaiveTime::MIN);
                continue;
            }
            let time = if self.date_matches(date) {
                self.first_time_from(cursor.time())
            } else {
                None
            };
            let Some(time) = time else {
                cursor = date.succ_opt()?.and_time(NaiveTime::MIN);
                continue;
            };
            let local = date.and_time(time);
            // A time the clock skips (a DST gap) does not fire; a time it
            // shows twice fires the first time.
            match self.tz.from_local_datetime(&local).earliest() {
                Some(at) => return Some(at.with_timezone(&Utc)),
                None => cursor = local + chrono::Duration::seconds(1),
            }
        }
        None
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (y, m) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(y, m, 1)
        .and_then(|d| d.pred_opt())
        .map_or(31, |d| d.day())
}

enum Expr {
    Range(Range),
    MonthDay(MonthDay),
}

/// One comma-separated part of field `name`'s expression.
fn parse_expr(name: &str, expr: &str, min: u32, max: u32) -> Result<Expr, String> {
    if name == "day" {
        if expr == "last" {
            return Ok(Expr::MonthDay(MonthDay::Last));
        }
        if let Some((nth, day)) = expr.split_once(' ') {
            let nth = match nth {
                "1st" => 1,
                "2nd" => 2,
                "3rd" => 3,
                "4th" => 4,
                "5th" => 5,
                "last" => 0,
                _ => {
                    return Err(format!(
                        "{expr:?}: {nth:?} is not one of 1st, 2nd, 3rd, 4th, 5th, last"
                    ))
                }
            };
            let weekday = name_index(day.trim(), &WEEKDAYS)
                .ok_or_else(|| format!("{expr:?}: {day:?} is not a weekday (mon to sun)"))?;
            return Ok(Expr::MonthDay(MonthDay::Weekday { nth, weekday }));
        }
    }
    let value = |text: &str| -> Result<u32, String> {
        let named = match name {
            "day_of_week" => name_index(text, &WEEKDAYS),
            "month" => name_index(text, &MONTHS).map(|m| m + 1),
            _ => None,
        };
        let v = match named {
            Some(v) => v,
            None => text.parse::<u32>().map_err(|_| {
                format!("{expr:?} is not a cron expression (like *, */5, 1-5, 1,15)")
            })?,
        };
        if v < min || v > max {
            return Err(format!("{v} is out of range {min}-{max}"));
        }
        Ok(v)
    };
    let (span, step) = match expr.split_once('/') {
        Some((span, step)) => {
            let step = step
                .parse::<u32>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| format!("{expr:?}: the step must be a positive number"))?;
            (span, step)
        }
        None => (expr, 1),
    };
    let (first, last) = match span.split_once('-') {
        _ if span == "*" => (min, max),
        Some((a, b)) => (value(a.trim())?, value(b.trim())?),
        // `a/step` runs from `a` to the field's end.
        None if step > 1 => (value(span)?, max),
        None => {
            let v = value(span)?;
            (v, v)
        }
    };
    if first > last {
        return Err(format!("{expr:?}: the range runs backwards"));
    }
    Ok(Expr::Range(Range { first, last, step }))
}

fn name_index(text: &str, names: &[&str]) -> Option<u32> {
    names
        .iter()
        .position(|n| *n == text)
        .and_then(|i| u32::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schedule(kind: &str, v: Value) -> Schedule {
        let params = v.as_object().cloned().unwrap_or_default();
        Schedule::of(kind, &params)
            .expect("a timer")
            .unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn cron(v: Value) -> Schedule {
        schedule(triggers::CRON_TIMER, v)
    }

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn next(s: &Schedule, from: &str) -> String {
        s.next_after(at(from))
            .map(|t| t.to_rfc3339())
            .unwrap_or_default()
    }

    fn problems(kind: &str, v: Value) -> Vec<Problem> {
        let params = v.as_object().cloned().unwrap_or_default();
        Schedule::of(kind, &params).expect("a timer").unwrap_err()
    }

    /// Each cron schedule, a time, and the next time it fires after it
    /// ("" for never).
    fn check(cases: &[(Value, &str, &str)]) {
        for (params, from, want) in cases {
            assert_eq!(
                next(&cron(params.clone()), from),
                *want,
                "{params} after {from}"
            );
        }
    }

    #[test]
    fn left_out_fields_follow_apscheduler() {
        check(&[
            // Less significant than `hour`: their minimum; more: every value.
            (
                json!({"hour": 3}),
                "2026-12-02T01:00:00Z",
                "2026-12-02T03:00:00+00:00",
            ),
            (
                json!({"hour": 3}),
                "2026-12-02T03:00:00Z",
                "2026-12-03T03:00:00+00:00",
            ),
            (
                json!({"minute": "*/5"}),
                "2026-12-02T01:02:03Z",
                "2026-12-02T01:05:00+00:00",
            ),
            // `second` alone: every minute at that second.
            (
                json!({"second": 30}),
                "2026-12-02T01:02:40Z",
                "2026-12-02T01:03:30+00:00",
            ),
            // Nothing given: every second.
            (
                json!({}),
                "2026-12-02T01:02:03.5Z",
                "2026-12-02T01:02:04+00:00",
            ),
        ]);
    }

    #[test]
    fn weekdays_months_and_month_days() {
        // 2026-12-02 is a Wednesday.
        let stepped = json!({"hour": "8-18/4", "minute": 15});
        check(&[
            (
                json!({"day_of_week": "mon-fri", "hour": 9}),
                "2026-12-04T10:00:00Z",
                "2026-12-07T09:00:00+00:00",
            ),
            (
                json!({"day_of_week": 0, "hour": 9}),
                "2026-12-02T10:00:00Z",
                "2026-12-07T09:00:00+00:00",
            ),
            (
                json!({"day": "last", "hour": 23, "minute": 59}),
                "2027-02-01T00:00:00Z",
                "2027-02-28T23:59:00+00:00",
            ),
            (
                json!({"day": "2nd tue"}),
                "2026-12-02T00:00:00Z",
                "2026-12-08T00:00:00+00:00",
            ),
            (
                json!({"day": "last fri"}),
                "2026-12-02T00:00:00Z",
                "2026-12-25T00:00:00+00:00",
            ),
            (
                json!({"month": "jan,apr,jul,oct", "day": 1}),
                "2026-12-02T00:00:00Z",
                "2027-01-01T00:00:00+00:00",
            ),
            (
                stepped.clone(),
                "2026-12-02T12:20:00Z",
                "2026-12-02T16:15:00+00:00",
            ),
            (stepped, "2026-12-02T16:20:00Z", "2026-12-03T08:15:00+00:00"),
            (
                json!({"month": 2, "day": 29}),
                "2026-12-02T00:00:00Z",
                "2028-02-29T00:00:00+00:00",
            ),
            (json!({"year": 2020}), "2026-12-02T00:00:00Z", ""),
        ]);
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        let paris = json!({"hour": 2, "minute": 30, "timezone": "Europe/Paris"});
        check(&[
            // Winter: UTC+1.
            (
                paris.clone(),
                "2026-12-02T00:00:00Z",
                "2026-12-02T01:30:00+00:00",
            ),
            // 2027-03-28 02:30 does not exist in Paris: that day does not fire.
            (
                paris.clone(),
                "2027-03-27T02:00:00Z",
                "2027-03-29T00:30:00+00:00",
            ),
            // 2026-10-25 02:30 happens twice: it fires the first time.
            (
                paris.clone(),
                "2026-10-24T12:00:00Z",
                "2026-10-25T00:30:00+00:00",
            ),
            (paris, "2026-10-25T00:30:00Z", "2026-10-26T01:30:00+00:00"),
        ]);
    }

    #[test]
    fn date_timers_fire_once() {
        let once = schedule(triggers::DATE_TIMER, json!({"date": "2026-12-24 18:00:00"}));
        assert_eq!(
            next(&once, "2026-12-02T00:00:00Z"),
            "2026-12-24T18:00:00+00:00"
        );
        assert_eq!(next(&once, "2026-12-24T18:00:00Z"), "");
        let zoned = schedule(
            triggers::DATE_TIMER,
            json!({"date": "2026-12-24T18:00:00", "timezone": "America/New_York"}),
        );
        assert_eq!(
            next(&zoned, "2026-12-02T00:00:00Z"),
            "2026-12-24T23:00:00+00:00"
        );
        let offset = schedule(
            triggers::DATE_TIMER,
            json!({"date": "2026-12-24T18:00:00+02:00"}),
        );
        assert_eq!(
            next(&offset, "2026-12-02T00:00:00Z"),
            "2026-12-24T16:00:00+00:00"
        );
    }

    #[test]
    fn intervals_are_aligned_to_the_epoch() {
        let every = schedule(
            triggers::INTERVAL_TIMER,
            json!({"unit": "minutes", "delta": 2}),
        );
        assert_eq!(every, Schedule::Every(Duration::from_secs(120)));
        assert_eq!(
            next(&every, "2026-12-02T01:03:00Z"),
            "2026-12-02T01:04:00+00:00"
        );
    }

    #[test]
    fn bad_parameters_name_the_field_and_the_fault() {
        let p = problems(triggers::CRON_TIMER, json!({"hour": 25}));
        assert_eq!(p, vec![("hour".into(), "25 is out of range 0-23".into())]);
        let p = problems(
            triggers::CRON_TIMER,
            json!({"minute": "*/0", "day_of_week": "funday"}),
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].0 == "day_of_week" && p[0].1.contains("funday"),
            "{p:?}"
        );
        assert!(p[1].0 == "minute" && p[1].1.contains("step"), "{p:?}");
        let p = problems(triggers::CRON_TIMER, json!({"day": "9th mon"}));
        assert!(p[0].1.contains("1st"), "{p:?}");
        let p = problems(triggers::CRON_TIMER, json!({"hour": "5-3"}));
        assert!(p[0].1.contains("backwards"), "{p:?}");
        let p = problems(
            triggers::CRON_TIMER,
            json!({"hour": 1, "timezone": "Mars/Olympus"}),
        );
        assert_eq!(p[0].0, "timezone");
        let p = problems(triggers::DATE_TIMER, json!({"date": "next tuesday"}));
        assert!(p[0].0 == "date" && p[0].1.contains("next tuesday"), "{p:?}");
        let p = problems(
            triggers::INTERVAL_TIMER,
            json!({"unit": "seconds", "delta": 0}),
        );
        assert_eq!(p[0].0, "delta");
        assert!(Schedule::of(triggers::WEBHOOK, &Map::new()).is_none());
    }
}
