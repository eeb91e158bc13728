pub mod netns;
pub mod relay;
