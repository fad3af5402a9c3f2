"""The scheduler: one active process claims due resources from PostgreSQL and enqueues their reconciles."""
