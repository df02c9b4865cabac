-- wrk script: send HEAD instead of GET (the URL must be presigned for HEAD: the method is part of the signature).
-- wrk's response parser does not know its request was a HEAD, so after a response carrying Content-Length: N > 0 it
-- waits for N body bytes that never come. The benchmark therefore HEADs a 0-byte object (Content-Length: 0).
-- WRK_DELAY_MS > 0: each connection waits that long after a response before its next request (paced load;
-- wrk times each request from its send, so the wait is not counted as latency).
wrk.method = "HEAD"
local pace = tonumber(os.getenv("WRK_DELAY_MS") or "0") or 0
if pace > 0 then
  function delay()
    return pace
  end
end
