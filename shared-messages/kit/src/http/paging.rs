//! One paging contract for every list route: `limit` (1 to
//! [`MAX_LIMIT`], default [`DEFAULT_LIMIT`]) and `offset` (default 0),
//! newest first. A list route declares the two query fields itself (its
//! query struct refuses unknown parameters) and reads them with
//! [`Page::new`].

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
}
