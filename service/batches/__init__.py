"""The OpenAI-compatible Batch API on top of the job system (docs/api.md §1, "Batch API").

A batch is a JSONL file of chat-completion requests; each valid line becomes one job of the
ordinary job system (priority `low`), fed to the queue a window at a time. Modules:
    models    the objects in OpenAI's shapes (files, batches, lists)
    filestore uploaded and produced files: records in Redis, content under DATA_DIR
    store     batch records: status compare-and-set, counters, the active set
    lines     one input line's chat body → a job request and its media reference
    validate  the whole input file checked before anything runs → the plan + error lines
    feeder    plan lines → jobs (a bounded number queued at once); finished jobs counted
    output    output and error file lines (chat.completion bodies, OpenAI error lines)
    finalize  output/error files assembled, the batch's terminal status
    runner    the gateway thread that drives every active batch through the above

Redis (besides the jobs themselves):
    omnibatch:file:{file_id}              string: the FileRecord JSON, expiring with the file
    omnibatch:owner:{owner}:files         sorted set (score 0, by id) of the owner's files
    omnibatch:files:expiry                sorted set "owner file_id" → when the file goes
    omnibatch:batch:{batch_id}            hash: the BatchRecord (counters updated in place)
    omnibatch:owner:{owner}:batches       sorted set (score 0, by id) of the owner's batches
    omnibatch:batches:active              set of batch ids not yet in a terminal status
    omnibatch:batch:{batch_id}:inflight   hash job_id → plan index, jobs fed and not counted
    omnibatch:batch:{batch_id}:feed_errors hash job_id → error JSON, lines that failed to feed
    omnibatch:batch:{batch_id}:lock       string: the runner holding the batch
DATA_DIR:
    files/{file_id}/content               a file's bytes
    batches/{batch_id}/plan.jsonl         the validated lines, one planned job each
    batches/{batch_id}/invalid.jsonl      error-file lines of the lines that failed validation
    batches/{batch_id}/media/{line}/input media decoded from a line's data URL
"""
