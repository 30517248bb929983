//! One paging contract for every list route: `limit` (1 to
//! [`MAX_LIMIT`], default [`DEFAULT_LIMIT`]) and `offset` (default 0),
//! newest first. A list route declares the two query fields itself (its
//! query struct refuses unknown parameters) and reads them with
//! [`Page::new`]; a status filter, with [`status_filter`].

use super::error::ApiError;

/// Page size when none is asked for.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most one page holds: enough for an operator's view or a test's
/// sweep, small enough that one request cannot make the store read
/// everything.
pub const MAX_LIMIT: u32 = 500;

/// A checked page: `limit` in range, `offset` as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub offset: u32,
}

impl Page {
    /// The page asked for by the `limit` and `offset` query parameters.
    pub fn new(limit: Option<u32>, offset: Option<u32>) -> Result<Self, ApiError> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 || limit > MAX_LIMIT {
            return Err(ApiError::InvalidParameter(format!(
                "limit must be from 1 to {MAX_LIMIT}"
            )));
        }
        Ok(Self {
            limit,
            offset: offset.unwrap_or(0),
        })
    }
}

/// The status filter of a list route, given as a query parameter: any
/// case, absent or empty for none. `all` lists the statuses and `name`
/// gives each its wire name (`SHIPPED`); an unknown one is a 400 that
/// lists them.
pub fn status_filter<S: Copy>(
    value: Option<&str>,
    all: &[S],
    name: fn(S) -> &'static str,
) -> Result<Option<S>, ApiError> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let wanted = value.to_ascii_uppercase();
    all.iter()
        .copied()
        .find(|status| name(*status) == wanted)
        .map(Some)
        .ok_or_else(|| {
            let known: Vec<&str> = all.iter().map(|s| name(*s)).collect();
            ApiError::InvalidParameter(format!(
                "unknown status {value:?}; expected one of {}",
                known.join(", ")
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked_and_defaulted() {
        assert_eq!(
            Page::new(None, None).ok(),
            Some(Page {
                limit: DEFAULT_LIMIT,
                offset: 0
            })
        );
        assert_eq!(
            Page::new(Some(500), Some(7)).map(|p| p.offset).ok(),
            Some(7)
        );
        for bad in [0, MAX_LIMIT + 1] {
            assert_eq!(
                Page::new(Some(bad), None).err().map(|e| e.code()),
                Some("invalid_parameter")
            );
        }
    }

    #[test]
    fn a_status_filter_takes_any_case_and_lists_the_known_ones() {
        let all = [true, false];
        let name = |b: bool| if b { "YES" } else { "NO" };
        assert_eq!(status_filter(None, &all, name).ok(), Some(None));
        assert_eq!(status_filter(Some(""), &all, name).ok(), Some(None));
        assert_eq!(
            status_filter(Some("no"), &all, name).ok(),
            Some(Some(false))
        );
        let unknown = status_filter(Some("maybe"), &all, name).err();
        assert_eq!(
            unknown.map(|e| (e.code(), e.to_string())),
            Some((
                "invalid_parameter",
                "unknown status \"maybe\"; expected one of YES, NO".to_owned()
            ))
        );
    }
}
