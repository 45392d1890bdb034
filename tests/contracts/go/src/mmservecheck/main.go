// Command mmservecheck is the Go side of mmserve's contract tests (tests/contracts/test_go_stubs.py).
//
// It imports every generated Go package, creates each service's client on a grpc.ClientConn
// (no call is made), builds one request per capability, and prints a t2i TextToImageRequest and
// an omni ChatRequest as JSON lines {"type", "binary" (hex of proto.Marshal), "json" (protojson)}
// for Python to decode. With arguments `decode <hex>` it instead unmarshals a TextToImageRequest
// produced by Python and prints it as protojson.
//
// Build in GOPATH mode (Go 1.19, Debian's grpc-go 1.33):
//
//	GO111MODULE=off GOPATH=$PWD/tests/contracts/go:$PWD/gen/go:/usr/share/gocode go build mmservecheck
package main

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"

	commonv1 "github.com/mmserve/mmserve/gen/go/mmserve/common/v1"
	omniv1 "github.com/mmserve/mmserve/gen/go/mmserve/omni/v1"
	t2iv1 "github.com/mmserve/mmserve/gen/go/mmserve/t2i/v1"
	visionv1 "github.com/mmserve/mmserve/gen/go/mmserve/vision/v1"
	vlv1 "github.com/mmserve/mmserve/gen/go/mmserve/vl/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// jobClient is what every capability's client shares: the common job RPCs.
type jobClient interface {
	GetJob(ctx context.Context, in *commonv1.GetJobRequest, opts ...grpc.CallOption) (*commonv1.GetJobResponse, error)
	CancelJob(ctx context.Context, in *commonv1.CancelJobRequest, opts ...grpc.CallOption) (*commonv1.CancelJobResponse, error)
}

var png = []byte{0x89, 0x50, 0x4e, 0x47}

func t2iRequest() *t2iv1.TextToImageRequest {
	return &t2iv1.TextToImageRequest{
		Params: &t2iv1.GenerationParams{
			Prompt:            "a red fox in the snow, 雪",
			NegativePrompt:    "blurry",
			Width:             proto.Uint32(768),
			Height:            proto.Uint32(512),
			NumInferenceSteps: proto.Uint32(0), // optional set to zero: presence is kept
			GuidanceScale:     proto.Float32(4.5),
			Seed:              proto.Uint64(18446744073709551615),
			NumImages:         proto.Uint32(2),
			OutputFormat:      commonv1.ImageFormat_IMAGE_FORMAT_WEBP,
			OutputQuality:     proto.Uint32(85),
		},
		Preview: &t2iv1.PreviewOptions{EveryNSteps: 5, MaxSide: 128},
	}
}

func omniRequest() *omniv1.ChatRequest {
	return &omniv1.ChatRequest{
		Messages: []*omniv1.ChatMessage{
			{
				Role:    commonv1.Role_ROLE_SYSTEM,
				Content: []*omniv1.ContentPart{{Part: &omniv1.ContentPart_Text{Text: "Be brief."}}},
			},
			{
				Role: commonv1.Role_ROLE_USER,
				Content: []*omniv1.ContentPart{
					{Part: &omniv1.ContentPart_Audio{Audio: &commonv1.Audio{
						Source:       &commonv1.Audio_Data{Data: []byte{0, 1, 254, 255}},
						Format:       commonv1.AudioFormat_AUDIO_FORMAT_PCM_S16LE,
						SampleRateHz: 16000,
						Channels:     1,
					}}},
					{Part: &omniv1.ContentPart_Image{Image: &commonv1.Image{
						Source: &commonv1.Image_Data{Data: png},
					}}},
				},
			},
		},
		Sampling: &commonv1.SamplingParams{
			MaxNewTokens: proto.Uint32(32),
			Temperature:  proto.Float32(0),
			Seed:         proto.Uint64(7),
			Stop:         []string{"</s>", "\n\n"},
		},
		Speech: &omniv1.SpeechOptions{Enabled: true, Voice: "voice-1", ChunkMs: 200},
	}
}

// otherRequests builds one request for each remaining capability (compile-time check of the
// field and oneof wrapper names).
func otherRequests() []proto.Message {
	return []proto.Message{
		&t2iv1.ImageToImageRequest{
			Params:   &t2iv1.GenerationParams{Prompt: "as a watercolor"},
			Image:    &commonv1.Image{Source: &commonv1.Image_Data{Data: png}, Format: commonv1.ImageFormat_IMAGE_FORMAT_PNG},
			Strength: proto.Float32(0.6),
		},
		&vlv1.ChatRequest{
			Messages: []*vlv1.ChatMessage{{
				Role: commonv1.Role_ROLE_USER,
				Content: []*vlv1.ContentPart{
					{Part: &vlv1.ContentPart_Image{Image: &commonv1.Image{Source: &commonv1.Image_Data{Data: png}}}},
					{Part: &vlv1.ContentPart_Text{Text: "What is in this picture?"}},
				},
			}},
			Sampling:        &commonv1.SamplingParams{MaxNewTokens: proto.Uint32(64)},
			ImageResolution: &vlv1.ImageResolution{MaxPixels: 1003520},
		},
		&visionv1.EmbedImagesRequest{
			Images:    []*commonv1.Image{{Source: &commonv1.Image_Data{Data: png}}},
			Normalize: proto.Bool(true),
			Pooling:   visionv1.Pooling_POOLING_MEAN,
		},
		&visionv1.RankRequest{
			Query:      &visionv1.VisionInput{Input: &visionv1.VisionInput_Text{Text: "a dog"}},
			Candidates: []*visionv1.VisionInput{{Input: &visionv1.VisionInput_Image{Image: &commonv1.Image{Source: &commonv1.Image_Data{Data: png}}}}},
			TopK:       1,
			Metric:     visionv1.SimilarityMetric_SIMILARITY_METRIC_COSINE,
		},
		&omniv1.PushSessionInputRequest{
			SessionId: "s",
			Input:     &omniv1.PushSessionInputRequest_Text{Text: "hello"},
			EndOfTurn: true,
		},
		&commonv1.GetJobRequest{JobId: "j"},
		&commonv1.CancelJobRequest{JobId: "j"},
	}
}

// streamEvents is never called: it type-checks a server-streaming loop and the oneof switch.
func streamEvents(ctx context.Context, c t2iv1.ImageGenerationServiceClient) (int, error) {
	stream, err := c.StreamTextToImage(ctx, t2iRequest())
	if err != nil {
		return 0, err
	}
	images := 0
	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			return images, nil
		}
		if err != nil {
			return images, err
		}
		switch e := ev.Event.(type) {
		case *t2iv1.StreamTextToImageResponse_Accepted:
			_ = e.Accepted.GetJobId()
		case *t2iv1.StreamTextToImageResponse_Queue:
			_ = e.Queue.GetPosition()
		case *t2iv1.StreamTextToImageResponse_Step:
			_ = e.Step.GetProgress().GetStep()
		case *t2iv1.StreamTextToImageResponse_Heartbeat:
			_ = e.Heartbeat.GetState() == commonv1.JobState_JOB_STATE_RUNNING
		case *t2iv1.StreamTextToImageResponse_Result:
			images += len(e.Result.GetImages())
		}
	}
}

type line struct {
	Type   string `json:"type"`
	Binary string `json:"binary"`
	JSON   string `json:"json"`
}

func emit(m proto.Message) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	j, err := protojson.Marshal(m)
	if err != nil {
		return err
	}
	out, err := json.Marshal(line{
		Type:   string(m.ProtoReflect().Descriptor().FullName()),
		Binary: hex.EncodeToString(b),
		JSON:   string(j),
	})
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

func run(args []string) error {
	if len(args) == 2 && args[0] == "decode" {
		b, err := hex.DecodeString(args[1])
		if err != nil {
			return err
		}
		req := &t2iv1.TextToImageRequest{}
		if err := proto.Unmarshal(b, req); err != nil {
			return err
		}
		j, err := protojson.Marshal(req)
		if err != nil {
			return err
		}
		fmt.Println(string(j))
		return nil
	}

	// Non-blocking dial: nothing listens on port 1 and no RPC is made.
	conn, err := grpc.Dial("127.0.0.1:1", grpc.WithInsecure())
	if err != nil {
		return err
	}
	defer conn.Close()
	t2i := t2iv1.NewImageGenerationServiceClient(conn)
	clients := []jobClient{
		t2i,
		vlv1.NewVisionLanguageServiceClient(conn),
		visionv1.NewVisionServiceClient(conn),
		omniv1.NewOmniServiceClient(conn),
	}
	if len(clients) != 4 {
		return fmt.Errorf("expected 4 clients")
	}
	_ = streamEvents // referenced, never called
	for _, m := range otherRequests() {
		if _, err := proto.Marshal(m); err != nil {
			return err
		}
	}
	if err := emit(t2iRequest()); err != nil {
		return err
	}
	return emit(omniRequest())
}

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mmservecheck:", err)
		os.Exit(1)
	}
}
