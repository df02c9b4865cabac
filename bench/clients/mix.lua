-- wrk script: small-object mix. Each request is a PUT with probability WRK_PUT_FRACTION (default 0.2), else a GET,
-- of a key chosen uniformly among n pre-loaded keys.
-- Environment: WRK_PUTS / WRK_GETS = files with one request path per line (key i on line i+1; presigned PUT and
-- GET URLs for S3, plain paths for nginx); WRK_RUN = run tag; WRK_SIZE = body size (default 4096).
-- PUT bodies have the layout of put_cycle.lua ("atoll-bench key=<i> run=<tag>" in the first 64 bytes).
local puts, gets, n = {}, {}, 0
local run, size, fill, put_fraction

local function load(file, into)
  local k = 0
  for line in io.lines(file) do
    k = k + 1
    into[k] = line
  end
  return k
end

function init(args)
  math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  n = load(os.getenv("WRK_PUTS"), puts)
  assert(load(os.getenv("WRK_GETS"), gets) == n, "WRK_PUTS and WRK_GETS must list the same keys")
  run = os.getenv("WRK_RUN") or "run"
  size = tonumber(os.getenv("WRK_SIZE") or "4096") or 4096
  put_fraction = tonumber(os.getenv("WRK_PUT_FRACTION") or "0.2") or 0.2
  local unit = string.format("%-16s", run):sub(1, 16)
  fill = string.rep(unit, math.ceil((size - 64) / 16)):sub(1, size - 64)
end

function request()
  local i = math.random(0, n - 1)
  if math.random() < put_fraction then
    local body = string.format("%-64s", "atoll-bench key=" .. i .. " run=" .. run) .. fill
    return wrk.format("PUT", puts[i + 1], nil, body)
  end
  return wrk.format("GET", gets[i + 1], nil, nil)
end
