"""Running calls in a worker: unary calls, map chunks, streams, over gRPC and over the lane."""
