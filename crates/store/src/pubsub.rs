//! Publishing on the live channels. Pub/sub is for live views only: nothing that must
//! arrive is sent only here.

use deadpool_redis::redis::AsyncCommands;
use kiln_model::{keys, BuildRef, OutputMessage};

use crate::connect::Store;
use crate::error::StoreError;

impl Store {
    /// Publishes a batch of a build's output, or its end, on the build's output channel.
    pub async fn publish_output(
        &self,
        build: &BuildRef,
        msg: &OutputMessage,
    ) -> Result<(), StoreError> {
        let payload = encode_output(msg)?;
        let mut c = self.conn().await?;
        let _: i64 = c.publish(keys::output_channel(build), payload).await?;
        Ok(())
    }
}

/// An optional output message for a script's argument: `""` when there is none.
pub(crate) fn encode_optional(msg: Option<&OutputMessage>) -> Result<String, StoreError> {
    Ok(msg.map(encode_output).transpose()?.unwrap_or_default())
}

/// An output message as published on a build's channel (also by `finish.lua`).
pub(crate) fn encode_output(msg: &OutputMessage) -> Result<String, StoreError> {
    serde_json::to_string(msg).map_err(|e| StoreError::corrupt("output", e))
}
