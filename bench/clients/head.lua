-- wrk script: send HEAD instead of GET (the URL must be presigned for HEAD: the method is part of the signature).
-- wrk's response parser does not know its request was a HEAD, so after a response carrying Content-Length: N > 0 it
-- waits for N body bytes that never come. The benchmark therefore HEADs a 0-byte object (Content-Length: 0).
-- WRK_DELAY_MS > 0 (paced load): after each response a connection waits a random 0..2*WRK_DELAY_MS ms (mean
-- WRK_DELAY_MS) before its next request. The randomness keeps the connections out of step; a fixed delay makes all
-- of them fire in the same millisecond, and the test then measures bursts of 64 requests queued behind each other.
-- wrk times each request from its send, so the wait itself is not counted as latency.
wrk.method = "HEAD"
local pace = tonumber(os.getenv("WRK_DELAY_MS") or "0") or 0
if pace > 0 then
  function init(args)
    math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  end
  function delay()
    return math.random(0, 2 * pace)
  end
end
