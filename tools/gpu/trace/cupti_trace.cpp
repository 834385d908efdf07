// GPU timeline tracer for any CUDA program (no source change): loaded by the CUDA driver through
// CUDA_INJECTION64_PATH, it records every kernel, memcpy and memset (device start/end) and every
// runtime/driver API call (host start/end, correlation id) with CUPTI's activity API, and writes
// them as CSV to $DT_TRACE_OUT at exit. tools/gpu/trace/gaps.py turns the CSV into GPU busy time,
// idle gaps and what the host was doing in each gap (Nsight Systems is not on the GPU machine).
//   CUDA_INJECTION64_PATH=libdt_trace.so DT_TRACE_OUT=t.csv deltatron bench ...
#include <cupti.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct Row {
  char kind;  // K kernel, C memcpy, S memset, R runtime API, D driver API
  uint64_t start, end;
  uint32_t corr;
  std::string name;
};

std::mutex g_mu;
std::vector<Row>* g_rows = nullptr;
constexpr size_t kBufBytes = 8u << 20;

void CUPTIAPI buffer_requested(uint8_t** buf, size_t* size, size_t* max_records) {
  *buf = static_cast<uint8_t*>(std::aligned_alloc(8, kBufBytes));
  *size = kBufBytes;
  *max_records = 0;
}

std::string api_name(CUpti_CallbackDomain dom, CUpti_CallbackId cbid) {
  const char* n = nullptr;
  if (cuptiGetCallbackName(dom, cbid, &n) != CUPTI_SUCCESS || !n) return std::to_string(cbid);
  return n;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buf, size_t, size_t valid) {
  std::vector<Row> got;
  CUpti_Activity* rec = nullptr;
  while (cuptiActivityGetNextRecord(buf, valid, &rec) == CUPTI_SUCCESS) {
    switch (rec->kind) {
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
      case CUPTI_ACTIVITY_KIND_KERNEL: {
        auto* k = reinterpret_cast<CUpti_ActivityKernel10*>(rec);
        got.push_back({'K', k->start, k->end, k->correlationId, k->name ? k->name : "?"});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        auto* m = reinterpret_cast<CUpti_ActivityMemcpy6*>(rec);
        got.push_back(
            {'C', m->start, m->end, m->correlationId,
             "memcpy kind " + std::to_string(m->copyKind) + " bytes " + std::to_string(m->bytes)});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        auto* m = reinterpret_cast<CUpti_ActivityMemset4*>(rec);
        got.push_back(
            {'S', m->start, m->end, m->correlationId, "memset bytes " + std::to_string(m->bytes)});
        break;
      }
      case CUPTI_ACTIVITY_KIND_RUNTIME:
      case CUPTI_ACTIVITY_KIND_DRIVER: {
        auto* a = reinterpret_cast<CUpti_ActivityAPI*>(rec);
        const bool rt = rec->kind == CUPTI_ACTIVITY_KIND_RUNTIME;
        got.push_back(
            {rt ? 'R' : 'D', a->start, a->end, a->correlationId,
             api_name(rt ? CUPTI_CB_DOMAIN_RUNTIME_API : CUPTI_CB_DOMAIN_DRIVER_API, a->cbid)});
        break;
      }
      default:
        break;
    }
  }
  std::free(buf);
  std::lock_guard<std::mutex> lock(g_mu);
  if (g_rows) g_rows->insert(g_rows->end(), got.begin(), got.end());
}

void write_out() {
  cuptiActivityFlushAll(1);
  const char* path = std::getenv("DT_TRACE_OUT");
  std::FILE* f = std::fopen(path && *path ? path : "dt_trace.csv", "w");
  if (!f) return;
  std::lock_guard<std::mutex> lock(g_mu);
  std::fprintf(f, "kind,start,end,corr,name\n");
  for (const Row& r : *g_rows) {
    std::string n = r.name;
    for (char& ch : n)
      if (ch == ',' || ch == '\n') ch = ';';
    std::fprintf(f, "%c,%llu,%llu,%u,%s\n", r.kind, (unsigned long long)r.start,
                 (unsigned long long)r.end, r.corr, n.c_str());
  }
  std::fclose(f);
  std::fprintf(stderr, "dt_trace: %zu records written\n", g_rows->size());
}

}  // namespace

extern "C" int InitializeInjection(void) {
  g_rows = new std::vector<Row>();
  g_rows->reserve(1 << 20);
  cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER);
  std::atexit(write_out);
  return 1;
}
