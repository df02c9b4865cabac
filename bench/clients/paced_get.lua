-- wrk script: GET with a random 0..2*WRK_DELAY_MS ms pause after each response (see head.lua for why random).
local pace = tonumber(os.getenv("WRK_DELAY_MS") or "0") or 0
if pace > 0 then
  function init(args)
    math.randomseed(os.time() + math.floor(os.clock() * 1e6))
  end
  function delay()
    return math.random(0, 2 * pace)
  end
end
