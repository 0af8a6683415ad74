//! Calendar dates from Unix time, in UTC, without a date library: stored and printed records
//! carry Unix milliseconds, and two places need them as text (run ids and transcripts).

/// A UTC calendar date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcDateTime {
    pub year: i64,
    pub month: i64,
    pub day: i64,
    pub millisecond_of_day: i64,
}

impl UtcDateTime {
    /// From Unix milliseconds (Howard Hinnant's civil-from-days algorithm, valid for any `i64` day).
    pub fn from_unix_ms(unix_ms: i64) -> UtcDateTime {
        let days = unix_ms.div_euclid(86_400_000);
        let millisecond_of_day = unix_ms.rem_euclid(86_400_000);
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z - era * 146_097;
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_index = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * month_index + 2) / 5 + 1;
        let month = if month_index < 10 {
            month_index + 3
        } else {
            month_index - 9
        };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        UtcDateTime {
            year,
            month,
            day,
            millisecond_of_day,
        }
    }

    /// `YYYYMMDD`.
    pub fn compact_date(&self) -> String {
        format!("{:04}{:02}{:02}", self.year, self.month, self.day)
    }

    /// `2026-11-22T22:42:28.000Z`.
    pub fn rfc3339_millis(&self) -> String {
        let ms = self.millisecond_of_day;
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year,
            self.month,
            self.day,
            ms / 3_600_000,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::UtcDateTime;

    #[test]
    fn known_dates() {
        assert_eq!(
            UtcDateTime::from_unix_ms(0).rfc3339_millis(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            UtcDateTime::from_unix_ms(1_795_387_348_000).compact_date(),
            "20261122"
        );
        // A leap day, and a time before the epoch.
        assert_eq!(
            UtcDateTime::from_unix_ms(951_825_600_000).compact_date(),
            "20000229"
        );
        assert_eq!(
            UtcDateTime::from_unix_ms(-1).rfc3339_millis(),
            "1969-12-31T23:59:59.999Z"
        );
    }
}
