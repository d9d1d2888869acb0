-- wrk script for `make bench-gateway`: full visit flows (open, charges, pre-settle, settle)
-- at a constant offered rate, each request with its own event_id. A flow's next request is
-- only sent once the previous one was answered (the answer names its event_id), so a
-- thread's connections interleave many flows without reordering any.
--
-- env: RATE (checkouts/s offered, all threads), THREADS (wrk -t), RUN (unique id),
--      TOKEN (a hospital's API key), DIALECT (native | fhir | national: how the
--      pre-settle and settle go; the national dialect sends the whole flow, 2201 2204 2206
--      2207, and FHIR sends a Claim to $submit after native open and charges)

local ffi = require("ffi")
ffi.cdef[[
  typedef struct { long tv_sec; long tv_nsec; } timespec;
  int clock_gettime(int clk_id, timespec *tp);
]]
local ts = ffi.new("timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local threads = {}
local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
  table.insert(threads, thread)
end

function init(args)
  rate = tonumber(os.getenv("RATE")) * 4 / tonumber(os.getenv("THREADS"))  -- requests/s here
  run = os.getenv("RUN")
  auth = "Bearer " .. os.getenv("TOKEN")
  interval = 1000 / rate
  next_at = nil
  flows = 0
  ready = {}        -- flows whose last request was answered: {n=, step=}
  waiting = {}      -- event_id -> flow
  sent_at = {}      -- settle event_id -> ms
  settle_ms = {}    -- integer ms -> count
  settles, errors, unanswered = 0, 0, 0
  dialect = os.getenv("DIALECT") or "native"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = auth
end

local T_OPEN = '{"type":"VisitOpened","event_id":"%s","schema_version":1,"occurred_at":"2025-06-01T09:00:00+08:00","source":"wrk","person_id":"%s","visit_id":"%s","facility_id":"F-1","facility_level":2,"facility_region":"500000","kind":"outpatient","opened_at":"2025-06-01T09:00:00+08:00","diagnoses":["J18.9"],"special_disease_code":null}'
local T_CHARGE = '{"type":"ItemsCharged","event_id":"%s","schema_version":1,"occurred_at":"2025-06-01T09:10:00+08:00","source":"wrk","person_id":"%s","visit_id":"%s","items":[{"line_id":"L1","code":"DRUG-1","name":"drug","category":"drug","catalog_class":"A","quantity":2,"unit_price_fen":4000,"amount_fen":8000},{"line_id":"L2","code":"SVC-1","name":"service","category":"service","catalog_class":"B","quantity":1,"unit_price_fen":12000,"amount_fen":12000}]}'
local T_PRE = '{"type":"PreSettlementRequested","event_id":"%s","schema_version":1,"occurred_at":"2025-06-01T09:20:00+08:00","source":"wrk","person_id":"%s","visit_id":"%s","closed_at":"2025-06-01T09:20:00+08:00"}'
local T_SETTLE = '{"type":"VisitClosed","event_id":"%s","schema_version":1,"occurred_at":"2025-06-01T09:21:00+08:00","source":"wrk","person_id":"%s","visit_id":"%s","closed_at":"2025-06-01T09:21:00+08:00"}'
local STEPS = { {"/v1/events", T_OPEN}, {"/v1/events", T_CHARGE}, {"/v1/presettle", T_PRE},
                {"/v1/settle", T_SETTLE} }

-- FHIR: a Claim for the visit (200.00 yuan in two lines, as T_CHARGE), use predetermination
-- then claim; its id names the flow (the event ids are <id>:presettle and <id>:settle)
local T_CLAIM = '{"resourceType":"Claim","id":"%s","identifier":[{"system":"https://yibao.example/fhir/sid/visit-id","value":"%s"}],"status":"active","type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/claim-type","code":"professional"}]},"use":"%s","patient":{"reference":"Patient/%s"},"billablePeriod":{"start":"2025-06-01T09:00:00+08:00","end":"%s"},"created":"%s","provider":{"reference":"Organization/F-1"},"priority":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/processpriority","code":"normal"}]},"insurance":[{"sequence":1,"focal":true,"coverage":{"reference":"Coverage/cov-1"}}],"total":{"value":200.00,"currency":"CNY"}}'
local FHIR_STEPS = { [3] = {"predetermination", "2025-06-01T09:20:00+08:00"},
                     [4] = {"claim", "2025-06-01T09:21:00+08:00"} }

-- the national interface: one envelope, the flow's four transactions
local T_ENV = '{"infno":"%s","msgid":"%s","mdtrtarea_admvs":"500000","insuplc_admdvs":"500000","fixmedins_code":"F-1","inf_time":"%s","input":%s}'
local NAT_STEPS = {
  {"2201", "2025-06-01 09:00:00", '{"data":{"psn_no":"%s","mdtrt_id":"%s","begntime":"2025-06-01 09:00:00","hosp_lv":"2","med_type":"11"},"diseinfo":[{"diag_code":"J18.9"}]}'},
  {"2204", "2025-06-01 09:10:00", '{"feedetail":[{"feedetl_sn":"L1","mdtrt_id":"%2$s","psn_no":"%1$s","med_list_codg":"DRUG-1","medins_list_name":"drug","list_type":"101","chrgitm_lv":"01","cnt":2,"pric":"40.00","det_item_fee_sumamt":"80.00"},{"feedetl_sn":"L2","mdtrt_id":"%2$s","psn_no":"%1$s","med_list_codg":"SVC-1","medins_list_name":"service","list_type":"201","chrgitm_lv":"02","cnt":1,"pric":"120.00","det_item_fee_sumamt":"120.00"}]}'},
  {"2206", "2025-06-01 09:20:00", '{"data":{"psn_no":"%s","mdtrt_id":"%s","medfee_sumamt":"200.00","endtime":"2025-06-01 09:20:00"}}'},
  {"2207", "2025-06-01 09:21:00", '{"data":{"psn_no":"%s","mdtrt_id":"%s","medfee_sumamt":"200.00","endtime":"2025-06-01 09:21:00"}}'},
}

local function national_input(template, person, visit)
  -- Lua's format has no positional arguments: fill %1$s / %2$s by hand
  local filled = template:gsub("%%1%$s", person):gsub("%%2%$s", visit)
  if filled:find("%%s") then filled = string.format(filled, person, visit) end
  return filled
end

-- wrk asks delay() when a connection is free, then request() when the delay is over, just
-- before it sends: so the pacing is decided here, and request() time is the send time.
function delay()
  local t = now_ms()
  if next_at == nil or next_at < t - 1000 then next_at = t end  -- never a burst to catch up
  local wait = next_at - t
  next_at = next_at + interval
  return math.max(0, math.floor(wait))
end

function request()
  local t = now_ms()
  local flow = table.remove(ready, 1)
  if flow == nil then
    flows = flows + 1
    flow = { n = flows, step = 1 }
  end
  local person = string.format("P-%s-%d-%d", run, tid, flow.n)
  local visit = string.format("V-%s-%d-%d", run, tid, flow.n)
  local eid = string.format("E-%s-%d-%d-%d", run, tid, flow.n, flow.step)
  local path, body, key = nil, nil, eid
  if dialect == "national" then
    local step = NAT_STEPS[flow.step]
    path = "/fsi/api/rsfComIfsService/callService"
    body = string.format(T_ENV, step[1], eid, step[2], national_input(step[3], person, visit))
  elseif dialect == "fhir" and flow.step >= 3 then
    local claim = string.format("C-%s-%d-%d", run, tid, flow.n)
    local step = FHIR_STEPS[flow.step]
    path = "/fhir/r4/Claim/$submit"
    body = string.format(T_CLAIM, claim, visit, step[1], person, step[2], step[2])
    key = claim
  else
    path = STEPS[flow.step][1]
    body = string.format(STEPS[flow.step][2], eid, person, visit)
  end
  waiting[key] = flow
  if flow.step == 4 then sent_at[key] = t end
  return wrk.format("POST", path, nil, body)
end

-- which flow an answer belongs to: the native answer's event_id, the national envelope's
-- inf_refmsgid, the ClaimResponse's request (Claim/<id>)
local function answer_key(body)
  if body == nil then return nil end
  return string.match(body, '"inf_refmsgid":"([^"]+)"')
      or string.match(body, '"reference":"Claim/([^"]+)"')
      or string.match(body, '"event_id":"([^"]+)"')
end

-- a business answer that is not a settlement or preview counts as an error
local function failed(status, body)
  if status >= 400 then return true end
  if dialect == "national" then return string.find(body, '"infcode":0', 1, true) == nil end
  if dialect == "fhir" then return string.find(body, '"outcome":"error"', 1, true) ~= nil end
  return false
end

function response(status, headers, body)
  local eid = answer_key(body)
  if failed(status, body or "") or eid == nil then
    errors = errors + 1
    return
  end
  local flow = waiting[eid]
  if flow == nil then return end
  waiting[eid] = nil
  local t0 = sent_at[eid]
  if t0 ~= nil then
    sent_at[eid] = nil
    settles = settles + 1
    if status ~= 200 then unanswered = unanswered + 1 end
    local ms = math.floor(now_ms() - t0)
    settle_ms[ms] = (settle_ms[ms] or 0) + 1
    return
  end
  if flow.step == 3 and status ~= 200 then unanswered = unanswered + 1 end
  flow.step = flow.step + 1
  table.insert(ready, flow)
end

function done(summary, latency, requests)
  local hist, n, errs, late = {}, 0, 0, 0
  for _, thread in ipairs(threads) do
    local h = thread:get("settle_ms")
    for ms, c in pairs(h) do hist[ms] = (hist[ms] or 0) + c; n = n + c end
    errs = errs + thread:get("errors")
    late = late + thread:get("unanswered")
  end
  local keys = {}
  for ms, _ in pairs(hist) do table.insert(keys, ms) end
  table.sort(keys)
  local function pct(p)
    local want, seen = math.ceil(n * p), 0
    for _, ms in ipairs(keys) do
      seen = seen + hist[ms]
      if seen >= want then return ms end
    end
    return -1
  end
  io.write(string.format("WRK-RESULT settles=%d p50_ms=%d p99_ms=%d errors=%d unanswered=%d "
    .. "requests=%d duration_s=%.2f http_errors=%d timeouts=%d\n", n, pct(0.5), pct(0.99), errs,
    late, summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.timeout))
end
