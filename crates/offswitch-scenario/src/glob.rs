//! Path globs for detectors, compiled to anchored regexes.
//!
//! `*` and `?` stay within one path component, `**/` matches any number of leading
//! directories (including none) and a trailing `**` matches everything below.

use regex::Regex;

/// A glob as an anchored regex over a whole path, or why the glob is malformed.
pub fn compile(glob: &str) -> Result<Regex, String> {
    if glob.is_empty() {
        return Err("empty glob".to_owned());
    }
    let mut pattern = String::from("^");
    let chars: Vec<char> = glob.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '*' if chars.get(i + 1) == Some(&'*') => {
                if chars.get(i + 2) == Some(&'/') {
                    pattern.push_str("(?:.*/)?");
                    i += 3;
                } else {
                    pattern.push_str(".*");
                    i += 2;
                }
                continue;
            }
            '*' => pattern.push_str("[^/]*"),
            '?' => pattern.push_str("[^/]"),
            '[' => {
                let close = chars[i + 1..]
                    .iter()
                    .position(|&c| c == ']')
                    .ok_or_else(|| format!("unclosed '[' in glob {glob:?}"))?;
                let class: String = chars[i + 1..i + 1 + close].iter().collect();
                let class = class
                    .strip_prefix('!')
                    .map_or(class.clone(), |negated| format!("^{negated}"));
                pattern.push('[');
                pattern.push_str(&class.replace('\\', "\\\\").replace('[', "\\["));
                pattern.push(']');
                i += close + 2;
                continue;
            }
            c => pattern.push_str(&regex::escape(&c.to_string())),
        }
        i += 1;
    }
    pattern.push('$');
    Regex::new(&pattern).map_err(|e| format!("bad glob {glob:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::compile;

    #[test]
    fn globs_match_paths() {
        let cases = [
            ("shutdown.sh", "shutdown.sh", true),
            ("shutdown.sh", "bin/shutdown.sh", false),
            ("**/kill", "kill", true),
            ("**/kill", "bin/kill", true),
            ("**/kill", "bin/killall", false),
            ("*.sh", "a.sh", true),
            ("*.sh", "d/a.sh", false),
            ("bin/**", "bin/x/y", true),
            ("file?.[ch]", "file1.c", true),
            ("file?.[!ch]", "file1.c", false),
        ];
        for (glob, path, expected) in cases {
            assert_eq!(
                compile(glob).unwrap().is_match(path),
                expected,
                "{glob} vs {path}"
            );
        }
        assert!(compile("a[b").is_err());
    }
}
