// Command edgeclient is the Go side of tests/e2e/test_go_client.py: a client built from the
// generated Go stubs (gen/go) that calls grpc.health.v1 and a capability through the Envoy edge,
// printing one JSON line per result.
//
//	edgeclient -addr 127.0.0.1:8080 -health mmserve.t2i.v1.ImageGenerationService -call t2i
//
// With -load SECONDS it runs closed-loop t2i callers instead (unary and streaming, like any Go
// service would) and prints one JSON line with the status codes seen per kind.
//
// Build in GOPATH mode (Go 1.19, Debian's grpc-go):
//
//	GO111MODULE=off GOPATH=$PWD/tests/e2e/go:$PWD/gen/go:/usr/share/gocode go build edgeclient
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	protov1 "github.com/golang/protobuf/proto"
	t2iv1 "github.com/mmserve/mmserve/gen/go/mmserve/t2i/v1"
	visionv1 "github.com/mmserve/mmserve/gen/go/mmserve/vision/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// codec marshals the generated stubs (protobuf API v2) with google.golang.org/protobuf, and
// Debian's pre-compiled grpc health messages (API v1) with github.com/golang/protobuf: Debian's
// grpc-go 1.33 default codec only knows API v1 and panics on the v2 messages.
type codec struct{}

func (codec) Marshal(v interface{}) ([]byte, error) {
	if m, ok := v.(protoreflect.ProtoMessage); ok {
		return proto.Marshal(m)
	}
	return protov1.Marshal(v.(protov1.Message))
}

func (codec) Unmarshal(data []byte, v interface{}) error {
	if m, ok := v.(protoreflect.ProtoMessage); ok {
		return proto.Unmarshal(data, m)
	}
	return protov1.Unmarshal(data, v.(protov1.Message))
}

func (codec) Name() string { return "proto" }

func emit(fields map[string]interface{}) {
	line, err := json.Marshal(fields)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(line))
}

func fail(what string, err error) {
	st := status.Convert(err)
	emit(map[string]interface{}{"error": what, "code": st.Code().String(), "message": st.Message()})
	os.Exit(1)
}

func callT2I(ctx context.Context, conn *grpc.ClientConn) {
	client := t2iv1.NewImageGenerationServiceClient(conn)
	request := &t2iv1.TextToImageRequest{
		Params: &t2iv1.GenerationParams{Prompt: "a gopher", NumInferenceSteps: proto.Uint32(2)},
	}
	var header metadata.MD
	reply, err := client.TextToImage(ctx, request, grpc.Header(&header))
	if err != nil {
		fail("TextToImage", err)
	}
	jobID := ""
	if ids := header.Get("mmserve-job-id"); len(ids) > 0 {
		jobID = ids[0]
	}
	data := reply.GetResult().GetImages()[0].GetData()
	emit(map[string]interface{}{"rpc": "TextToImage", "bytes": len(data), "png": string(data[1:4]), "job_id": jobID})

	stream, err := client.StreamTextToImage(ctx, request)
	if err != nil {
		fail("StreamTextToImage", err)
	}
	var kinds []string
	for {
		event, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			fail("StreamTextToImage", err)
		}
		kind := fmt.Sprintf("%T", event.GetEvent())
		kinds = append(kinds, strings.TrimPrefix(kind, "*t2iv1.StreamTextToImageResponse_"))
	}
	emit(map[string]interface{}{"rpc": "StreamTextToImage", "events": kinds})
}

// tally counts status codes per call kind, and keeps how each failed stream ended.
type tally struct {
	mu     sync.Mutex
	codes  map[string]map[string]int
	failed []map[string]interface{}
}

func (t *tally) add(kind string, err error, events int) {
	st := status.Convert(err)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.codes[kind] == nil {
		t.codes[kind] = map[string]int{}
	}
	t.codes[kind][st.Code().String()]++
	if err != nil {
		t.failed = append(t.failed, map[string]interface{}{
			"kind": kind, "code": st.Code().String(), "message": st.Message(), "events": events,
		})
	}
}

// loadT2I runs `unary` unary callers and `streams` stream callers in closed loops for `seconds`;
// the first stream caller sends `pin` as the mmserve-replica header when it is set.
func loadT2I(conn *grpc.ClientConn, seconds float64, unary, streams, steps, streamSteps int, pin string) {
	client := t2iv1.NewImageGenerationServiceClient(conn)
	stop := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	results := &tally{codes: map[string]map[string]int{}}
	request := func(n int) *t2iv1.TextToImageRequest {
		return &t2iv1.TextToImageRequest{
			Params: &t2iv1.GenerationParams{Prompt: "a gopher", NumInferenceSteps: proto.Uint32(uint32(n)), Width: proto.Uint32(8)},
		}
	}
	var wg sync.WaitGroup
	for i := 0; i < unary; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := client.TextToImage(ctx, request(steps))
				cancel()
				results.add("unary", err, 0)
			}
		}()
	}
	for i := 0; i < streams; i++ {
		wg.Add(1)
		go func(first bool) {
			defer wg.Done()
			for time.Now().Before(stop) {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				if first && pin != "" {
					ctx = metadata.AppendToOutgoingContext(ctx, "mmserve-replica", pin)
				}
				steps := streamSteps
				if first && pin != "" {
					// Long, so it is surely mid-stream on the pinned replica when that is lost.
					steps = streamSteps * 5
				}
				events := 0
				stream, err := client.StreamTextToImage(ctx, request(steps))
				for err == nil {
					if _, err = stream.Recv(); err == nil {
						events++
					}
				}
				cancel()
				if err == io.EOF {
					err = nil
				}
				results.add("stream", err, events)
			}
		}(i == 0)
	}
	wg.Wait()
	emit(map[string]interface{}{"load": "t2i", "codes": results.codes, "failed": results.failed})
}

func callVision(ctx context.Context, conn *grpc.ClientConn) {
	client := visionv1.NewVisionServiceClient(conn)
	reply, err := client.EmbedTexts(ctx, &visionv1.EmbedTextsRequest{Texts: []string{"a photo of a gopher"}})
	if err != nil {
		fail("EmbedTexts", err)
	}
	emit(map[string]interface{}{"rpc": "EmbedTexts", "dimension": reply.GetDimension(), "count": len(reply.GetEmbeddings())})
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "the Envoy edge")
	services := flag.String("health", "", "comma-separated service names to health-check")
	call := flag.String("call", "", "capability to call: t2i or vision")
	load := flag.Float64("load", 0, "seconds of closed-loop t2i load instead of -call")
	unary := flag.Int("unary", 3, "unary callers of -load")
	streams := flag.Int("streams", 2, "stream callers of -load")
	steps := flag.Int("steps", 2, "steps of each unary call of -load")
	streamSteps := flag.Int("stream-steps", 12, "steps of each stream of -load")
	pin := flag.String("pin", "", "mmserve-replica value the first stream caller of -load sends")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Debian's grpc-go has no credentials/insecure package.
	conn, err := grpc.DialContext(ctx, *addr, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(codec{})))
	if err != nil {
		fail("dial", err)
	}
	defer conn.Close()

	health := grpc_health_v1.NewHealthClient(conn)
	for _, name := range strings.Split(*services, ",") {
		if name == "" {
			continue
		}
		reply, err := health.Check(ctx, &grpc_health_v1.HealthCheckRequest{Service: name})
		if err != nil {
			fail("health "+name, err)
		}
		emit(map[string]interface{}{"health": name, "status": reply.GetStatus().String()})
	}
	if *load > 0 {
		loadT2I(conn, *load, *unary, *streams, *steps, *streamSteps, *pin)
		return
	}
	switch *call {
	case "t2i":
		callT2I(ctx, conn)
	case "vision":
		callVision(ctx, conn)
	case "":
	default:
		fail("call", fmt.Errorf("unknown capability %q", *call))
	}
}
