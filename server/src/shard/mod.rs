pub mod table;
pub mod timers;
pub mod tokens;
