//! How the store's failures become the kit's [`ApiError`] (one vocabulary
//! for both services): 503 `store_unavailable`, the cause in the log.

use service_kit::http::ApiError;

use crate::store::StoreError;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::store(e)
    }
}
