//! End-to-end tests: producer-api, workers, real RabbitMQ, PostgreSQL and temp directories.

mod acks;
mod cancel;
mod config;
mod lifecycle;

mod poison;
mod pools;
mod runs;
mod runs_batches;
mod runs_census;
mod runs_partition_counts;
mod runs_partition_drops;
mod runs_partitions;
mod runs_safety;
mod runs_schema;
mod shutdown;
mod started;
mod temp_files;
