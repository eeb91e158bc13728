pub mod netns;
pub mod relay;
pub mod topology;
