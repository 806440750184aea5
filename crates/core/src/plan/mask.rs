//! Digit masks, as phone systems write them, turned into anchored regular expressions:
//! `X` any digit, `N` 2-9, `Z` 1-9, `[1-5]` a class, `.` one or more of anything that
//! follows, `!` zero or more; digits, `+`, `*` and `#` stand for themselves.

/// The regular expression for `mask`, or why it is not a mask.
pub fn to_regex(mask: &str) -> Result<String, String> {
    if mask.is_empty() {
        return Err("an empty mask matches nothing".into());
    }
    let mut out = String::with_capacity(mask.len() * 6 + 2);
    out.push('^');
    let mut chars = mask.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            'X' | 'x' => out.push_str("[0-9]"),
            'N' | 'n' => out.push_str("[2-9]"),
            'Z' | 'z' => out.push_str("[1-9]"),
            '0'..='9' => out.push(c),
            '+' | '*' | '#' => {
                out.push('\\');
                out.push(c);
            }
            '.' => {
                if chars.peek().is_some() {
                    return Err(format!("`{mask}`: `.` must come last"));
                }
                out.push_str(".+");
            }
            '!' => {
                if chars.peek().is_some() {
                    return Err(format!("`{mask}`: `!` must come last"));
                }
                out.push_str(".*");
            }
            '[' => {
                out.push('[');
                let mut closed = false;
                for c in chars.by_ref() {
                    match c {
                        ']' => {
                            closed = true;
                            break;
                        }
                        '0'..='9' | '-' => out.push(c),
                        _ => return Err(format!("`{mask}`: only digits and `-` go inside `[]`")),
                    }
                }
                if !closed {
                    return Err(format!("`{mask}`: `[` without `]`"));
                }
                out.push(']');
            }
            _ => {
                return Err(format!(
                    "`{mask}`: `{c}` is not part of a digit mask (X N Z 0-9 + * # [..] . !)"
                ))
            }
        }
    }
    out.push('$');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(mask: &str, s: &str) -> bool {
        regex_lite::Regex::new(&to_regex(mask).unwrap())
            .unwrap()
            .is_match(s)
    }

    #[test]
    fn masks() {
        assert!(matches("NXXX", "2001"));
        assert!(!matches("NXXX", "1001"));
        assert!(!matches("NXXX", "20011"));
        assert!(matches("+1NXXNXXXXXX", "+12125551234"));
        assert!(!matches("+1NXXNXXXXXX", "+11255512345"));
        assert!(matches("9.", "90044123"));
        assert!(!matches("9.", "9"));
        assert!(matches("9!", "9"));
        assert!(matches("*7[2-3]", "*73"));
        assert!(matches("Z!", "5"));
    }

    #[test]
    fn bad_masks() {
        assert!(to_regex("").is_err());
        assert!(to_regex("9.1").is_err());
        assert!(to_regex("[1-").is_err());
        assert!(to_regex("abc").is_err());
    }
}
