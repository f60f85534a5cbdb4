-- Used by bench/run.py for the flask-service scenario: every request is a POST of the
-- same JSON document, read once from the file named by BENCH_BODY_FILE (bench/run.py
-- passes bench/wrk/order.json, a 4 KiB order with 30 line items), with
-- Content-Type: application/json. The figures are printed by report.lua, loaded from
-- this script's folder, as for every other wrk run (its BENCH_BODY_BYTES is left unset).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

local path = os.getenv("BENCH_BODY_FILE") or (here .. "order.json")
local f = assert(io.open(path, "rb"))
local body = f:read("*a")
f:close()
-- The file ends with a newline; a client's JSON body does not.
body = body:gsub("%s+$", "")

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
