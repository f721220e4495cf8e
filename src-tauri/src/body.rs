//! [`Body`]: a command argument that is the whole invoke payload, read as one type. It is what lets a command take
//! exactly the JSON object the server's route takes as its body: `invoke('send_message', {conversation_id, text,
//! on_event})` reads `{conversation_id, text}` as a `SendMessageRequest` (the request types ignore keys they do not
//! know, such as the channel), and `invoke('rename_conversation', {conversation_id, title})` reads a `RenameArgs`.

use serde::de::DeserializeOwned;
use tauri::ipc::{CommandArg, CommandItem, InvokeBody, InvokeError};
use tauri::Runtime;

use sepchat_core::api::{ApiError, ErrorCode};

/// The invoke payload as `T`. A payload that does not fit (a missing field, a wrong type, an unknown key where the
/// type refuses them) is refused as an `ApiError` with code `invalid_input`, as the server answers a bad body.
pub struct Body<T>(pub T);

impl<'de, R: Runtime, T: DeserializeOwned> CommandArg<'de, R> for Body<T> {
    fn from_command(command: CommandItem<'de, R>) -> Result<Self, InvokeError> {
        match command.message.payload() {
            InvokeBody::Json(value) => T::deserialize(value)
                .map(Body)
                .map_err(|error| invalid_input(format!("invalid arguments for {}: {error}", command.name))),
            InvokeBody::Raw(_) => {
                Err(invalid_input(format!("{} takes a JSON object of arguments, not bytes", command.name)))
            }
        }
    }
}

fn invalid_input(message: String) -> InvokeError {
    InvokeError::from(ApiError { code: ErrorCode::InvalidInput, message })
}
