-- wrk script: durable small PUTs cycling through a list of pre-generated request paths (presigned PUT URLs for S3,
-- plain /put/... paths for nginx dav), so a run is a mix of new keys and overwrites.
-- Environment: WRK_PATHS = file with one request path (path?query) per line, key i on line i+1;
--              WRK_START = index of the first key of this run; WRK_RUN = run tag (<= 40 chars);
--              WRK_SIZE  = body size (default 4096).
-- Body of key i: "atoll-bench key=<i> run=<tag>" padded to 64 bytes, then the run tag repeated to WRK_SIZE, so a
-- read-back check can tell which run wrote which key. Keys go start, start+1, ... (mod n) in request order; with
-- several wrk threads, thread t takes every T-th key.
local threads_seen = 0
function setup(thread)
  thread:set("tid", threads_seen)
  threads_seen = threads_seen + 1
end

local paths, n = {}, 0
local start, run, size, fill, nthreads, issued

function init(args)
  for line in io.lines(os.getenv("WRK_PATHS")) do
    n = n + 1
    paths[n] = line
  end
  start = tonumber(os.getenv("WRK_START") or "0") or 0
  run = os.getenv("WRK_RUN") or "run"
  size = tonumber(os.getenv("WRK_SIZE") or "4096") or 4096
  nthreads = tonumber(os.getenv("WRK_THREADS") or "1") or 1
  local unit = string.format("%-16s", run):sub(1, 16)
  fill = string.rep(unit, math.ceil((size - 64) / 16)):sub(1, size - 64)
  tid = tid or 0
  issued = 0
end

function request()
  local i = (start + issued * nthreads + tid) % n
  issued = issued + 1
  local body = string.format("%-64s", "atoll-bench key=" .. i .. " run=" .. run) .. fill
  return wrk.format("PUT", paths[i + 1], nil, body)
end
