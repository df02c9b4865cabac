"""Request authentication for the S3 front end: SigV4 header and presigned-URL verification (``sigv4``) and the
incremental aws-chunked body decoder with chunk and trailer signature checks (``chunked``); for the Blob front end,
Shared Key (``sharedkey``) and shared access signatures (``sas``)."""
