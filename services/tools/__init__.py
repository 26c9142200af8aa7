"""Commands that read or reshape results: report, sort, review, evaluate, compact, exports, submit."""
